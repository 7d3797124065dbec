"""Exercise checks, one module per chapter (chNN.py): checkers, reference solutions and wrong answers that must fail.

Each module lists its exercises in EXERCISES (see `sdtune.course.check.Exercise`). A checker takes only the
learner's function and builds what it compares against itself (small tensors, a scheduler, a peft layer), so a
test can run it without the notebook.
"""
