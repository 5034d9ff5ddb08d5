"""A stand-in for kubectl, kind, docker, helm, curl and sleep in the deploy/ script tests.

Run as `fake_tool.py TOOL ARGS...` (through a small wrapper named TOOL on PATH). It appends the
call to $FAKE_DIR/calls.jsonl and answers from $FAKE_DIR/scenario.json: the first rule whose
tool matches, whose regex is found in the space-joined arguments and whose `when` phase is the
current one. A rule's answers are replayed in order (the last one repeats); an answer may print
to stdout/stderr, exit with a code, switch the phase, write the file named after a flag (as
`docker save -o FILE` does) or block until killed (as `kubectl port-forward` does). A call no
rule answers exits 97 and is recorded as unanswered, so a test sees the script asked for
something the recording does not cover.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
import time


def main() -> int:
    tool, args = sys.argv[1], sys.argv[2:]
    fake_dir = os.environ["FAKE_DIR"]
    with open(os.path.join(fake_dir, "scenario.json")) as f:
        rules = json.load(f)["rules"]
    joined = " ".join(args)
    with open(os.path.join(fake_dir, "state.lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state_path = os.path.join(fake_dir, "state.json")
        state = json.load(open(state_path)) if os.path.exists(state_path) else {"phase": "start", "used": {}}
        answer, index = None, None
        for i, rule in enumerate(rules):
            if rule["tool"] != tool or not re.search(rule.get("match", ""), joined):
                continue
            if "when" in rule and rule["when"] != state["phase"]:
                continue
            n = state["used"].get(str(i), 0)
            state["used"][str(i)] = n + 1
            answers = rule["answers"]
            answer, index = answers[min(n, len(answers) - 1)], i
            break
        if answer and "phase" in answer:
            state["phase"] = answer["phase"]
        with open(state_path, "w") as f:
            json.dump(state, f)
        with open(os.path.join(fake_dir, "calls.jsonl"), "a") as f:
            # A file argument, or curl's `-H @FILE`: its first bytes, as the tool would read them.
            paths = [a.removeprefix("@") for a in args]
            files = {a: open(p, errors="replace").read(200) for a, p in zip(args, paths) if os.path.isfile(p)}
            f.write(json.dumps({"tool": tool, "args": args, "rule": index, "phase": state["phase"], "files": files}) + "\n")
    if answer is None:
        print(f"fake {tool}: no recorded answer for: {joined}", file=sys.stderr)
        return 97
    if "write_file_after" in answer:
        path = args[args.index(answer["write_file_after"]) + 1]
        with open(path, "w") as f:
            f.write(answer.get("file_content", "archive"))
    sys.stdout.write(answer.get("stdout", ""))
    sys.stderr.write(answer.get("stderr", ""))
    sys.stdout.flush()
    if answer.get("block"):
        time.sleep(answer["block"])
    if tool == "sleep" and args:
        # Time passes, compressed: the scripts' pacing stays, the test stays fast.
        time.sleep(min(float(args[0]), 5.0) / 50)
    return int(answer.get("rc", 0))


if __name__ == "__main__":
    sys.exit(main())
