"""Whether a cluster's predictions rest on a calibrated profile, and the one
line that says so when they do not.

A cluster without `cluster.profile` (localhost, dgx-b200, a custom cluster)
is simulated with `Profile()`, the documented defaults: on a CPU the
predicted step times can be off by an order of magnitude (up to 26x was
seen). `sandbox simulate`, `search`, `report` and `demo` print
`calibration_warning` on stderr and the report shows it above its table;
the line names the command that writes a profile (`sandbox calibrate`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from sandbox.profile import Profile, profile_for

DEFAULTS_SOURCE = Profile().source  # "documented defaults (not calibrated)"


class CalibrationWarning(UserWarning):
    """`sandbox.simulate` on a cluster without a calibrated profile (the command
    line prints the same line itself and silences this category)."""
EXAMPLE = "my-profile.toml"


def is_calibrated(cluster: Any) -> bool:
    """True when the cluster names a profile TOML whose `source` is not the
    documented defaults (a profile file is read, and cached, on first ask)."""
    return bool(getattr(cluster, "profile", "")) and \
        profile_for(cluster).source != DEFAULTS_SOURCE


def calibration_command(cluster: Any) -> str:
    """The `sandbox calibrate` call that measures a profile for `cluster`."""
    on_cpu = getattr(getattr(cluster, "gpu", None), "name", "") == "cpu"
    device = "" if on_cpu else " --device cuda"
    where = "this machine" if getattr(cluster, "name", "") == "localhost" else "one of its nodes"
    return f"`sandbox calibrate{device} --out {EXAMPLE}` on {where}"


def calibration_warning(cluster: Any) -> str | None:
    """None for a calibrated cluster, else one line: what is wrong, what to run."""
    if is_calibrated(cluster):
        return None
    name = getattr(cluster, "name", "") or "custom"
    what = (f"profile '{cluster.profile}' holds the documented defaults, not a calibration"
            if getattr(cluster, "profile", "") else
            "has no calibrated profile (documented defaults)")
    return (f"warning: cluster '{name}' {what}: predictions can be off by an order of "
            f"magnitude; run {calibration_command(cluster)} and set "
            f'cluster.profile = "{EXAMPLE}"')


def calibration_warnings(clusters: Iterable[Any]) -> list[str]:
    """The distinct warnings of several clusters, in first-seen order."""
    out: list[str] = []
    for c in clusters:
        w = calibration_warning(c)
        if w is not None and w not in out:
            out.append(w)
    return out


def warn_uncalibrated(clusters: Iterable[Any], file: IO[str] | None = None) -> None:
    """Print each distinct warning of `clusters` once (stderr by default)."""
    for w in calibration_warnings(clusters):
        print(w, file=file or sys.stderr)


def warn_api(cluster: Any) -> None:
    """`warnings.warn` the cluster's calibration warning (Python API, Jupyter)."""
    import warnings

    w = calibration_warning(cluster)
    if w is not None:
        warnings.warn(w.removeprefix("warning: "), CalibrationWarning, stacklevel=3)
