"""A missing or wrong data package fails with the command that installs it."""
import pytest

from kexue.data import MissingDataError, require_package


def test_present_package_passes():
    import numpy
    assert require_package("numpy", numpy.__version__) == numpy.__version__


def test_missing_package_names_the_install_command():
    with pytest.raises(MissingDataError, match=r"pip install 'zh-no-such-dataset==0.0.1'"):
        require_package("zh-no-such-dataset", "0.0.1")


def test_wrong_version_names_the_pinned_one():
    with pytest.raises(MissingDataError, match=r"the book pins 0\.0\.0"):
        require_package("numpy", "0.0.0")


def test_missing_debian_package_names_apt():
    with pytest.raises(MissingDataError, match="apt-get install -y dataset-no-such-thing"):
        require_package("dataset-no-such-thing", "1.0", apt=True)


def test_no_deps_package_names_the_no_deps_install():
    with pytest.raises(MissingDataError, match=r"pip install --no-deps 'no-such-data-pkg==1.0'"):
        require_package("no-such-data-pkg", "1.0", no_deps=True)
