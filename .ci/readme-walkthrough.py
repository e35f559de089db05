#!/usr/bin/env python3
"""Runs the README's grpcurl walkthrough against a fresh server and compares the output.

Every ```sh block of the "Walkthrough with grpcurl" section runs, in order, in one bash session
inside a scratch folder where the server was started with its defaults (so `mail/` and
`roster.db` are where the README says). The only change to the commands is the port: the
README's 127.0.0.1:50051 becomes a free port. The block after each command block is its
expected output; ids, times, tokens and other values that differ on every run are masked on
both sides before they are compared. JSON is compared value by value; other text line by line,
up to a closing "..." line.
"""

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

README_ADDR = "127.0.0.1:50051"


def section(readme: str) -> str:
    start = readme.index("## Walkthrough with grpcurl")
    end = readme.index("\n## ", start + 1)
    return readme[start:end]


def blocks(text: str):
    """(language, body) of each fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w*)\n(.*?)```", text, re.S)]


MASKS = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<id>"),
    (re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z"), "<time>"),
    (re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC"), "<time>"),
    (re.compile(r"^Date: .*$", re.M), "Date: <date>"),
    (re.compile(r"v1\.\d+"), "<consistency-token>"),
    # Tokens, MIME boundaries, page tokens: long runs of URL-safe characters that mix lower
    # case with upper case or digits (enum names, all upper case, are kept).
    (
        re.compile(r"[A-Za-z0-9_\-]{16,}"),
        lambda m: "<opaque>"
        if re.search(r"[a-z]", m.group()) and re.search(r"[A-Z0-9]", m.group())
        else m.group(),
    ),
]


def mask(text: str) -> str:
    for pattern, replacement in MASKS:
        text = pattern.sub(replacement, text)
    return text


def json_documents(text: str):
    decoder = json.JSONDecoder()
    documents, position = [], 0
    text = text.strip()
    while position < len(text):
        document, end = decoder.raw_decode(text, position)
        documents.append(document)
        position = end
        while position < len(text) and text[position].isspace():
            position += 1
    return documents


def masked_json(value):
    if isinstance(value, dict):
        return {k: masked_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked_json(v) for v in value]
    if isinstance(value, str):
        return mask(value)
    return value


def compare(expected_lang: str, expected: str, actual: str) -> str | None:
    """None if `actual` matches `expected`, else what differs."""
    if expected_lang == "json":
        try:
            got = [masked_json(d) for d in json_documents(actual)]
        except json.JSONDecodeError as err:
            return f"output is not JSON ({err}):\n{actual}"
        want = [masked_json(d) for d in json_documents(expected)]
        if got != want:
            return f"expected:\n{json.dumps(want, indent=2)}\ngot:\n{json.dumps(got, indent=2)}"
        return None
    want_lines = mask(expected).rstrip("\n").split("\n")
    got_lines = mask(actual).rstrip("\n").split("\n")
    if want_lines and want_lines[-1] == "...":
        want_lines = want_lines[:-1]
        got_lines = got_lines[: len(want_lines)]
    if [l.rstrip() for l in got_lines] != [l.rstrip() for l in want_lines]:
        return "expected:\n" + "\n".join(want_lines) + "\ngot:\n" + "\n".join(got_lines)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(addr: str):
    for _ in range(100):
        probe = subprocess.run(
            ["grpcurl", "-plaintext", addr, "grpc.health.v1.Health/Check"],
            capture_output=True,
            text=True,
        )
        if "SERVING" in probe.stdout:
            return
        time.sleep(0.2)
    raise SystemExit("the server did not become healthy")


def main():
    binary = os.path.abspath(sys.argv[1])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        steps = blocks(section(f.read()))
    addr = f"127.0.0.1:{free_port()}"

    # Pair each command block with the output block that follows it, if any.
    pairs = []
    for i, (lang, body) in enumerate(steps):
        if lang != "sh":
            continue
        following = steps[i + 1] if i + 1 < len(steps) else None
        expected = following if following and following[0] != "sh" else None
        pairs.append((body.replace(README_ADDR, addr), expected))

    marker = "@@walkthrough-step"
    script = "".join(f"echo {marker}\n{body}\n" for body, _ in pairs)
    with tempfile.TemporaryDirectory() as scratch:
        log = open(os.path.join(scratch, "server.log"), "w")
        server = subprocess.Popen(
            [binary, "--listen", addr], cwd=scratch, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_for_health(addr)
            run = subprocess.run(
                ["bash", "-c", script],
                cwd=scratch,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=120,
            )
        finally:
            server.terminate()
            server.wait(timeout=30)
        outputs = run.stdout.split(marker + "\n")[1:]
        if len(outputs) != len(pairs):
            raise SystemExit(f"ran {len(outputs)} of {len(pairs)} steps:\n{run.stdout}")
        failures = 0
        for number, ((command, expected), output) in enumerate(zip(pairs, outputs), 1):
            if expected is None:
                continue
            difference = compare(expected[0], expected[1], output)
            if difference:
                failures += 1
                print(f"step {number} differs:\n{command}\n{difference}\n")
        checked = sum(1 for _, e in pairs if e is not None)
        if failures:
            raise SystemExit(f"{failures} of {checked} README walkthrough outputs differ")
        print(f"README walkthrough: {len(pairs)} command blocks run, {checked} outputs match")


if __name__ == "__main__":
    main()
