"""The ``g-selfatt-train`` command: ``main.py`` of the checkout this package is installed from.

``pip install -e .`` (``make setup``) installs the command; it runs the experiment runner of
that checkout from any folder, with the same ``--config.<field>=<value>`` flags as
``python main.py``. The runner (``config.py``, ``datasets/``, ``runner/``) is not part of the
wheel, whose packages are the libraries and the models; from a wheel the command says so.
"""

from __future__ import annotations

import pathlib
import runpy
import sys

CHECKOUT = pathlib.Path(__file__).resolve().parent


def main() -> None:
    """Runs the checkout's ``main.py`` as ``python main.py`` would, its folder first on ``sys.path``.

    (As ``__main__``, so that ``--help`` lists the config fields as it does for ``main.py``.)
    """
    if not (CHECKOUT / "main.py").is_file() or not (CHECKOUT / "runner").is_dir():
        print("Error: g-selfatt-train runs the experiment runner of a checkout, which this installation "
              "(a wheel) does not contain. Clone the repository and run `make setup` there (it installs the "
              "command), or use the library API: g_selfatt_models.create_model / load_model.", file=sys.stderr)
        sys.exit(2)
    sys.path.insert(0, str(CHECKOUT))
    runpy.run_path(str(CHECKOUT / "main.py"), run_name="__main__")


if __name__ == "__main__":
    main()
