"""Runs the stage function that lungseg.stages registers for this rule (shell: --help)."""

from lungseg.stages import run_script

run_script(globals())
