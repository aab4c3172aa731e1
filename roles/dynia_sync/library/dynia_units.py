#!/usr/bin/python
"""Reload or restart a node's changed system units, in order, in one module call.

A handler looped over the units costs a module call (a round trip) per unit: four of them on
every peer of a node that joins. Each unit gets what ``ansible.builtin.systemd_service`` would
do for the same state: ``reloaded`` reloads a running unit and starts a stopped one,
``restarted`` restarts it.
"""

from __future__ import annotations

import subprocess
from typing import Any

DOCUMENTATION = r"""
module: dynia_units
short_description: Reload or restart system units in order, stopping at the first failure
options:
  units:
    description: The units, in the order they are acted on.
    type: list
    elements: dict
    required: true
    suboptions:
      component: {description: Component the unit belongs to (named in errors)., type: str}
      unit: {description: systemd unit., type: str, required: true}
      state: {description: What to do., type: str, required: true, choices: [reloaded, restarted]}
"""

RETURN = r"""
done:
  description: Per unit acted on, in order, C(component), C(unit) and the C(systemctl) verb used.
  type: list
  returned: always
"""


def _systemctl(*words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemctl", *words], capture_output=True, text=True, check=False)


def verb_for(state: str, active: bool) -> str:
    """The systemctl verb for a unit's wanted ``state``, given whether it runs now."""
    if state == "restarted":
        return "restart"
    return "reload" if active else "start"


def act_on(units: list[dict[str, Any]]) -> tuple[list[dict[str, str]], str]:
    """Act on each unit in turn; what was done, and the failure ("" when none) that stopped it."""
    done: list[dict[str, str]] = []
    for entry in units:
        unit = entry["unit"]
        active = _systemctl("is-active", "--quiet", unit).returncode == 0
        verb = verb_for(entry["state"], active)
        result = _systemctl(verb, unit)
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip()[-2000:]
            name = entry.get("component") or unit
            return (
                done,
                f"{name}: systemctl {verb} {unit} failed (exit {result.returncode}): {output}",
            )
        done.append({"component": entry.get("component") or unit, "unit": unit, "verb": verb})
    return done, ""


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={
            "units": {
                "type": "list",
                "elements": "dict",
                "required": True,
                "options": {
                    "component": {"type": "str"},
                    "unit": {"type": "str", "required": True},
                    "state": {
                        "type": "str",
                        "required": True,
                        "choices": ["reloaded", "restarted"],
                    },
                },
            },
        },
        supports_check_mode=True,
    )
    if module.check_mode:
        module.exit_json(changed=bool(module.params["units"]), done=[])
    done, failure = act_on(module.params["units"])
    if failure:
        module.fail_json(msg=failure, done=done, changed=bool(done))
    module.exit_json(changed=bool(done), done=done)


if __name__ == "__main__":
    main()
