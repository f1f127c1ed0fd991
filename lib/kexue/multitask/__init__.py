"""Multi-task learning: how several losses become one update.

- :mod:`kexue.multitask.loss`: weighting the losses (plain sum, initial / prior / real-time state
  normalisation, Kendall et al.'s uncertainty weighting, gradient-norm weighting) and the joint
  character tagger of chapter ``multitask-loss`` (https://kexue.fm/archives/8870).
- ``kexue.multitask.gradient`` (a later session): gradient methods, MGDA and its upper bound, for
  chapter ``multitask-gradient`` (https://kexue.fm/archives/8896).
"""
