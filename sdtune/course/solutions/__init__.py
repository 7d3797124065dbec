"""Reference solutions to the chapters' exercises (chNN.py for chapter NN)."""
