"""Runs ``main.py`` command lines, each in a forked child of one process that imported everything once.

A test that runs many short ``main.py`` commands pays Python's and torch's start-up (about 3 s)
for each; this server pays it once. It imports ``main`` (torch, the models, the datasets) but
computes nothing with torch, so forking it is safe (no thread pool exists yet), and each child
starts from the same clean state a fresh process would have: no flags parsed, no seeds set.

Protocol, one JSON object per line: the request on stdin, ``{"argv": [...], "cwd": ..., "env":
{...}, "output": path}`` (the arguments after ``main.py``, environment variables to set, the file
that receives the child's stdout and stderr); the reply on stdout, ``{"returncode": n}``.
:class:`ForkedMain` is the client.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Dict, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
_RUN = subprocess.run  # the real one, for commands that are not main.py runs


class ForkedMain:
    """A running server; :meth:`run` is one ``python main.py ...`` in a forked child."""

    def __init__(self, env: Dict[str, str]):
        self.process = subprocess.Popen([sys.executable, __file__], cwd=REPO_ROOT, env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def run(self, argv: Sequence[str], output: Path, cwd: Path = REPO_ROOT, env: Dict[str, str] = None) -> int:
        request = {"argv": list(argv), "cwd": str(cwd), "env": env or {}, "output": str(output)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        if not reply:
            raise RuntimeError(f"the forked-main server stopped (exit {self.process.wait()})")
        return json.loads(reply)["returncode"]

    def run_command(self, command: Sequence[str], *args: object, check: bool = False, cwd: Path = REPO_ROOT,
                    **kwargs: object) -> subprocess.CompletedProcess:
        """``subprocess.run`` with ``[python, ".../main.py", *argv]`` run through the server (its output
        printed after it), any other command passed on to ``subprocess.run``: a stand-in for it in
        scripts that start ``main.py``."""
        if len(command) < 2 or Path(command[1]).name != "main.py" or args or kwargs:
            return _RUN(command, *args, check=check, cwd=cwd, **kwargs)
        with tempfile.TemporaryDirectory() as folder:
            output = Path(folder) / "output.txt"
            returncode = self.run(command[2:], output, Path(cwd))
            text = output.read_text()
        print(text, end="", flush=True)
        if check and returncode != 0:
            raise subprocess.CalledProcessError(returncode, command, output=text)
        return subprocess.CompletedProcess(command, returncode)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def _child(request: Dict[str, object]) -> int:
    import main

    handle = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(handle, 1)
    os.dup2(handle, 2)
    os.chdir(request["cwd"])
    os.environ.update(request["env"])
    sys.argv = ["main.py", *request["argv"]]
    try:
        main.cli()
        return 0
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def serve() -> None:
    sys.path.insert(0, str(REPO_ROOT))
    import main  # noqa: F401  (everything a run imports, once)

    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os._exit(_child(request))
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
