"""Setup for mrcnn. Metadata lives in setup.cfg.

`build_ext` also compiles the RoIAlign TensorFlow op (custom_ops/build.py) when TensorFlow and a
C++ compiler are present. Building the op is optional: without it mrcnn falls back to a pure-TF
RoIAlign with the same numbers. `make ops` (or `python custom_ops/build.py`) builds it explicitly.
"""

import runpy
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent


class BuildRoiAlignOp(build_ext):
    """Builds the custom op into mrcnn/ops/_lib; never fails the install."""

    def run(self) -> None:
        super().run()
        builder = HERE / "custom_ops" / "build.py"
        if not builder.is_file():
            return
        try:
            runpy.run_path(str(builder), run_name="mrcnn_build")["build"](verbose=True)
        except Exception as error:  # the op is optional: say why and continue with the fallback
            print(f"warning: RoIAlign op not built ({error}); mrcnn will use the pure-TF fallback",
                  file=sys.stderr)


class DistributionWithOp(Distribution):
    """setuptools runs build_ext only for distributions with extension modules; ours has a TF op
    built by its own script, so it declares one (this also marks the wheel platform-specific)."""

    def has_ext_modules(self) -> bool:
        return True


setup(cmdclass={"build_ext": BuildRoiAlignOp}, distclass=DistributionWithOp)
