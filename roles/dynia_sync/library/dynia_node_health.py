#!/usr/bin/python
"""Release the rejoin hold and wait, on the node itself, until it and its services are healthy.

One module call polls every health URL locally at a short interval: a `uri` task with
`until`/`delay` costs a round trip per attempt and sleeps whole seconds between them.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: dynia_node_health
short_description: Release the node's hold file and wait until its health URLs answer
description:
  - Deletes I(hold_file) (while it exists the node's own health check answers 503), then polls
    each URL in order until it answers one of its statuses, every I(interval) seconds, for up
    to I(timeout) seconds in all. Fails naming the first URL that never answered as expected.
options:
  hold_file: {description: File whose presence holds the node out of rotation., type: str}
  checks:
    description: The URLs to wait for, in order.
    type: list
    elements: dict
    required: true
    suboptions:
      url: {description: URL to GET., type: str, required: true}
      statuses:
        description: Statuses that count as healthy (default 200).
        type: list
        elements: int
  timeout: {description: Seconds to wait for all of them., type: float, default: 20}
  interval: {description: Seconds between two attempts., type: float, default: 0.2}
  request_timeout: {description: Seconds one request may take., type: float, default: 5}
"""

RETURN = r"""
waited:
  description: Seconds spent until every URL answered.
  type: float
  returned: success
"""


def status_of(url: str, request_timeout: float) -> tuple[int | None, str]:
    """The URL's HTTP status (None when it did not answer) and what went wrong, if anything."""
    try:
        with urllib.request.urlopen(url, timeout=request_timeout) as response:
            return response.status, ""
    except urllib.error.HTTPError as error:
        return error.code, f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return None, str(getattr(error, "reason", error))


def wait_healthy(checks: list[dict], timeout: float, interval: float, request_timeout: float):
    """None when every check passed before the deadline, else (url, last problem)."""
    deadline = time.monotonic() + timeout
    for check in checks:
        statuses = set(check.get("statuses") or [200])
        while True:
            status, problem = status_of(check["url"], request_timeout)
            if status in statuses:
                break
            if time.monotonic() >= deadline:
                return check["url"], problem or f"HTTP {status}"
            time.sleep(interval)
    return None


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "hold_file": {"type": "str"},
            "checks": {"type": "list", "elements": "dict", "required": True},
            "timeout": {"type": "float", "default": 20},
            "interval": {"type": "float", "default": 0.2},
            "request_timeout": {"type": "float", "default": 5},
        },
        supports_check_mode=False,
    )
    params = module.params
    released = False
    if params["hold_file"] and os.path.exists(params["hold_file"]):
        os.unlink(params["hold_file"])
        released = True
    started = time.monotonic()
    failure = wait_healthy(
        params["checks"], params["timeout"], params["interval"], params["request_timeout"]
    )
    if failure:
        url, problem = failure
        module.fail_json(
            msg=f"{url} did not answer healthy within {params['timeout']:g} s: {problem}",
            changed=released,
        )
    module.exit_json(changed=released, waited=round(time.monotonic() - started, 2))


if __name__ == "__main__":
    main()
