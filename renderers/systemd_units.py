"""The maintenance units: oneshot services, persistent timers and the recovery unit run at boot."""

from __future__ import annotations

from collections.abc import Sequence

from renderers.maintenance_script import MAINTENANCE_SCRIPT

UNIT_DIR = "/etc/systemd/system"
GC_UNIT = "registry-gc"
BACKUP_UNIT = "registry-backup"
RECOVER_UNIT = "registry-maintenance-recover"


def render_unit(sections: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> str:
    """A systemd unit file from (section, [(key, value)]) pairs, in the given order."""
    blocks = ["# Managed by the registry Pulumi program; edits are overwritten."]
    for section, entries in sections:
        blocks.append("\n".join([f"[{section}]", *(f"{key}={value}" for key, value in entries)]))
    return "\n\n".join(blocks) + "\n"


def render_service(description: str, action: str) -> str:
    """A oneshot service running `registry-maintenance ACTION` after Docker is up."""
    return render_unit(
        [
            ("Unit", [("Description", description), ("Wants", "docker.service"), ("After", "docker.service network-online.target")]),
            (
                "Service",
                [
                    ("Type", "oneshot"),
                    ("ExecStart", f"{MAINTENANCE_SCRIPT} {action}"),
                    # On stop the script's exit trap recreates the read-write container; give it the time.
                    ("TimeoutStopSec", "120"),
                ],
            ),
        ]
    )


def render_recover_service() -> str:
    """At boot: a window cut short by a reboot would otherwise leave the registry read-only for good."""
    return render_unit(
        [
            (
                "Unit",
                [
                    ("Description", "Return the registry to read-write if a maintenance window was cut short"),
                    ("Wants", "docker.service"),
                    ("After", "docker.service"),
                ],
            ),
            ("Service", [("Type", "oneshot"), ("ExecStart", f"{MAINTENANCE_SCRIPT} recover")]),
            ("Install", [("WantedBy", "multi-user.target")]),
        ]
    )


def render_timer(description: str, on_calendar: str) -> str:
    """A persistent timer (a run missed while the host was down happens at the next boot)."""
    return render_unit(
        [
            ("Unit", [("Description", description)]),
            ("Timer", [("OnCalendar", on_calendar), ("Persistent", "true"), ("RandomizedDelaySec", "60")]),
            ("Install", [("WantedBy", "timers.target")]),
        ]
    )
