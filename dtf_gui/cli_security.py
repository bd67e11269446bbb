"""`dtf agents`, `dtf token`, `dtf clients`: enrollment and keys, from the command line.

Each is one client-API operation of the admin role (see coordinator/trust_api.py); the local `dtf`
is that admin through the key in $DTF_HOME, a remote one with `--key FILE`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from dtf_gui.cli_common import client_for, print_table

_DURATION = re.compile(r"(?P<n>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[smhd]?)")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``7d`` -> seconds (argparse type)."""
    m = _DURATION.fullmatch(text.strip())
    if m is None or float(m["n"]) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: write e.g. 90s, 15m, 1h or 7d")
    return float(m["n"]) * _UNITS[m["unit"]]


def _when(t: float) -> str:
    """A date and time for lists whose times may be days apart (tables elsewhere show the time of day)."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


# -- dtf agents ---------------------------------------------------------------------------------------


def agents_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("action", nargs="?", default="list", choices=["list", "accept", "reject", "revoke"],
                    help="list (default), or accept / reject / revoke the agents named")
    sp.add_argument("agents", nargs="*", metavar="NAME|FINGERPRINT",
                    help="agents by name, or by fingerprint (SHA256:... or 8+ characters of it)")
    sp.add_argument("--all-pending", action="store_true", help="every agent waiting for acceptance")
    sp.add_argument("--seen", action="store_true",
                    help="list: also the agents that mDNS shows on the LAN and that are not enrolled")
    sp.add_argument("--json", action="store_true")


def cmd_agents(args: argparse.Namespace) -> int:
    with client_for(args) as c:
        if args.action == "list":
            if args.agents or args.all_pending:
                print("dtf agents: name agents only with accept, reject or revoke", file=sys.stderr)
                return 2
            rows = c.call("list_agents")
            seen = c.call("seen_agents") if args.seen else []
            if args.json:
                print(json.dumps({"agents": rows, "seen": seen} if args.seen else rows, indent=2))
            else:
                for r in rows:
                    r["online"] = "yes" if r.get("online") else ""
                print_table(rows, ["name", "state", "fingerprint", "hostname", "address", "online", "how"])
                pending = sum(1 for r in rows if r["state"] == "pending")
                if pending:
                    print(f"\n{pending} agent(s) wait for acceptance: `dtf agents accept NAME` (check the "
                          "fingerprint against the one the agent logged), or `--all-pending`")
                if args.seen:
                    print("\nSeen on the LAN (mDNS), not enrolled:" if seen else "\nNo other agent seen on the LAN.")
                    if seen:
                        print_table(seen, ["name", "fingerprint", "address", "slots", "tags"])
            return 0
        if not args.agents and not args.all_pending:
            print(f"dtf agents {args.action}: name the agents (NAME or FINGERPRINT), or pass --all-pending",
                  file=sys.stderr)
            return 2
        done = c.call(f"{args.action}_agents", {"agents": args.agents, "all_pending": args.all_pending})
    names = done.get(f"{args.action}ed" if args.action != "revoke" else "revoked") or []
    if args.json:
        print(json.dumps(done))
    else:
        print(f"{args.action}ed: {', '.join(names) or 'none'}".replace("revokeed", "revoked"))
    return 0


# -- dtf token ---------------------------------------------------------------------------------------


def token_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("action", choices=["create", "list", "revoke"],
                    help="create: print a join token for new agents; list: the tokens and their uses left; "
                         "revoke ID: no agent joins with it any more")
    sp.add_argument("id", nargs="?", help="the token's id (revoke)")
    sp.add_argument("--uses", type=int, default=1, help="agents that may join with it (default 1)")
    sp.add_argument("--ttl", type=duration, default=3600.0, help="how long it is valid: 90s, 15m, 1h (default), 7d")
    sp.add_argument("--tag", action="append", default=[], metavar="TAG",
                    help="tags the agents that join with it get (repeat for several)")
    sp.add_argument("--from-config", action="store_true",
                    help="create: the token of security.enrollment_token in coordinator.yaml, which never expires "
                         "and has no use limit (for agents that come and go, as in a cluster)")
    sp.add_argument("--json", action="store_true")


def cmd_token(args: argparse.Namespace) -> int:
    if args.action == "revoke" and not args.id:
        print("dtf token revoke: name the token's id (`dtf token list` shows them)", file=sys.stderr)
        return 2
    with client_for(args) as c:
        if args.action == "list":
            rows = c.call("list_tokens")
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                for r in rows:
                    r["expires"] = _when(r["expires"])
                    r["valid"] = "yes" if r["valid"] else "no"
                print_table(rows, ["id", "uses_left", "expires", "tags", "valid"])
            return 0
        if args.action == "revoke":
            c.call("revoke_token", {"id": args.id})
            print(f"revoked: {args.id}")
            return 0
        ask: dict[str, object] = {"from_config": True} if args.from_config else {
            "uses": args.uses, "ttl": args.ttl, "tags": args.tag}
        t = c.call("create_token", ask)
    if args.json:
        print(json.dumps(t))
        return 0
    # The token alone on the first line, so that scripts can take it with `head -1`.
    print(t["token"])
    print(f"# on each test machine: {t['command']}", file=sys.stderr)
    if args.from_config:
        print(f"# from security.enrollment_token: no expiry, no use limit (change the secret to end it); "
              f"coordinator key {t['fingerprint']}", file=sys.stderr)
    else:
        print(f"# {t['uses']} use(s), valid for {args.ttl:.0f} s; coordinator key {t['fingerprint']}",
              file=sys.stderr)
    return 0


# -- dtf clients -------------------------------------------------------------------------------------


def clients_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("action", nargs="?", default="list", choices=["list", "add", "remove"])
    sp.add_argument("name", nargs="?", help="the client's name (add, remove)")
    sp.add_argument("--role", choices=["viewer", "operator", "admin"], default="viewer",
                    help="viewer: read and subscribe; operator: also submit, cancel, assign, retry, priority, "
                         "analyze; admin: everything, enrollment and tokens included (default viewer)")
    sp.add_argument("--output", "-o", metavar="FILE",
                    help="where to write the new client's key file (default: ./NAME.key; '-' prints it)")
    sp.add_argument("--json", action="store_true")


def cmd_clients(args: argparse.Namespace) -> int:
    from dtf_agent import keys

    if args.action in ("add", "remove") and not args.name:
        print(f"dtf clients {args.action}: name the client", file=sys.stderr)
        return 2
    with client_for(args) as c:
        if args.action == "list":
            rows = c.call("list_clients")
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                for r in rows:
                    r["created"] = _when(r["created"])
                print_table(rows, ["name", "role", "fingerprint", "created"])
            return 0
        if args.action == "remove":
            c.call("remove_client", {"name": args.name})
            print(f"removed: {args.name}")
            return 0
        out = args.output or f"{args.name}.key"
        if out != "-" and Path(out).exists():
            print(f"dtf clients add: {out} exists; choose another --output", file=sys.stderr)
            return 1
        made = c.call("add_client", {"name": args.name, "role": args.role})
    kf = keys.KeyFile(**made["key_file"])
    if out == "-":
        print(json.dumps(made["key_file"], indent=2))
    else:
        keys.write_key_file(Path(out), kf)
        print(f"{out}: client {args.name!r}, role {args.role}, key {made['fingerprint']} (mode 0600; it holds a "
              f"secret key: hand it over privately). Use it with `dtf --key {out} ...` or DTF_CLIENT_KEY.")
    return 0
