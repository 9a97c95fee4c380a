"""The original experiments' entry point, ``python run_experiment.py --config.<field>=<value>``.

It runs ``main.py`` unchanged: every field of the original ``config.py`` is a field here, with
its original meaning (``device=""`` is the CPU; ``multistep`` with ``sched_decay_factor=1.0``
keeps the learning rate). What differs from the original runner is on purpose and listed in
``runs/README.md`` ("The originals' command lines").
"""

import pathlib
import runpy

if __name__ == "__main__":
    runpy.run_path(str(pathlib.Path(__file__).with_name("main.py")), run_name="__main__")
