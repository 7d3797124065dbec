"""Measuring what images show, and how sure we are.

- `judge`: the CNN that names an image's shape, colour, background and style (the course's stand-in for CLIP score);
- `checker`: an independent reader of the same attributes, rules on pixels with no learned weights;
- `stats`: rates as k of n with Wilson intervals, and differences between methods that say when they are not resolved;
- `provenance`: what every results file records (command, commit, machine, time, sha256 of the weights measured);
- `prompts`, `subject`, `composition`: the course's scores built on the judge.
- `blocks`: where in the UNet a LoRA holds its concept (switched off, and cut, by block).
"""
