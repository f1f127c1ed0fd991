"""kexue.render_check's DOM checks on tiny HTML strings: each defect of issue 19 §1 is caught, and
clean pages (typeset math, code that shows `$$`, real tables) give no finding."""
from kexue.render_check import findings


def kinds(html):
    return [k for k, _ in findings(html)]


CLEAN = """<html><head><title>$$ in title</title><script>var a = "$$ \\\\begin";</script></head><body>
<p>Prose with <mjx-container class="MathJax"><mjx-math><mjx-mi>x</mjx-mi></mjx-math></mjx-container>.</p>
<div class="cell_output"><pre>accuracy 0.91</pre></div>
<pre><code>print("$$ \\\\begin{split}")</code></pre>
<table><tr><th>mean |W − W1|</th></tr><tr><td>0.1</td></tr></table>
<p>Costs 3 $ and 4 $ each.</p><br><img src="a.png">
</body></html>"""


def test_clean_page_has_no_findings():
    assert findings(CLEAN) == []


def test_mathjax_error_node():
    html = ('<p><mjx-container><mjx-merror data-mjx-error="\\tag not allowed in split environment">'
            '<mjx-mtext>\\tag not allowed</mjx-mtext></mjx-merror></mjx-container></p>')
    ks = findings(html)
    assert ("math-error", "\\tag not allowed in split environment") in ks


def test_math_input_error_text():
    assert "math-error" in kinds("<p>Math input error</p>")


def test_raw_display_dollars_in_a_paragraph():
    html = "<p>the standard deviation $$\\sigma_a=\\sigma\\sqrt{1-c},$$ which is</p>"
    assert kinds(html).count("raw-tex") == 2


def test_raw_begin():
    assert kinds("<div><p>\\begin{split} a \\end{split}</p></div>") == ["raw-tex"]


def test_table_pipe_paragraph():
    html = "<p>| a | mean |W| |\n|---|---|\n| 1 | 2 |</p>"
    assert kinds(html) == ["table-pipe"]
    assert kinds("<p>a | b</p>") == []


def test_object_repr_in_output():
    html = ('<div class="cell_output"><pre>&lt;matplotlib.legend.Legend at 0x7f3a2c1b9d50&gt;</pre>'
            '<pre>&lt;__main__.Foo object at 0x10&gt;</pre></div>')
    assert findings(html) == [("object-repr", "<matplotlib.legend.Legend at 0x7f3a2c1b9d50>"),
                              ("object-repr", "<__main__.Foo object at 0x10>")]


def test_unclosed_tags_do_not_break_the_reader():
    assert kinds("<div><p>| x |<div>text</div></div><p>ok") == ["table-pipe"]
