"""Calling AE allow-list as shipped (issue #7 security): on by default, rejected
associations are logged with the peer address.

The node runs with the allow-list the test environment sets (`support.clean_env`);
the shipped default itself is checked by tests/receive_default_acl.rs.
"""

from __future__ import annotations

import re

import support

ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the node's log is colored


def test_unlisted_calling_ae_is_rejected_and_logged_with_peer(node: support.Node):
    ok = support.echoscu(node.port, node.ae_title, "ECHOSCU")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    refused = support.echoscu(node.port, node.ae_title, "INTRUDER")
    assert refused.returncode != 0, "an unlisted calling AE title was accepted"
    assert "reject" in (refused.stdout + refused.stderr).lower(), refused.stdout + refused.stderr

    def logged() -> bool:
        return any(
            "INTRUDER" in line and "rejected" in line and re.search(r"peer=\"?127\.0\.0\.1", line)
            for line in ANSI.sub("", node.log_text()).splitlines()
        )

    support.wait_for("the rejection with the peer address in the node log", logged, timeout=10, alive=node.problem)

