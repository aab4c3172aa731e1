"""Property-based: whatever the CLI arguments, compose file or hand-edited state, no traceback.

For every generated input the CLI (run in-process against a private DYNIA_HOME) either succeeds
or exits non-zero with a message, and a refused command leaves the state file and config.json
byte for byte as they were. Commands that would reach Docker, SSH or a provider API are left
out (cluster create always has --plan-only; deploy stops at the image check), so this stays fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from cli_invoke import Outcome, run_dynia
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sample_state import save_sample

from dynia.errors import RenderError, UsageError
from dynia.render.compose import inspect_compose, node_compose, parse_compose
from dynia.state import StateStore

# Raise for a deeper hunt, e.g. DYNIA_HYPOTHESIS_EXAMPLES=5000; 200 keeps the suite fast.
EXAMPLES = int(os.environ.get("DYNIA_HYPOTHESIS_EXAMPLES", "200"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _template_home() -> Path:
    """A home with a serving cluster, a planned one, config.json and a CA key, built once."""
    root = Path(tempfile.mkdtemp(prefix="dynia-properties-"))
    save_sample(root)
    run_dynia(root, "cluster", "create", "--name", "planned", "--nodes", "2", "--plan-only")
    run_dynia(root, "context", "use", "demo")
    (root / "config.json").write_text('{"local_dns_zones": ["test"], "region": "local"}\n')
    (root / "pki").mkdir()
    (root / "pki" / "ca.key").write_text("key\n")
    return root


TEMPLATE = _template_home()


@contextlib.contextmanager
def sandbox() -> Iterator[Path]:
    """A fresh copy of the template home under a private folder that is also the cwd."""
    root = Path(tempfile.mkdtemp(prefix="dynia-sandbox-"))
    home = root / "home"
    shutil.copytree(TEMPLATE, home)
    (root / "work").mkdir()
    (root / "foreign").mkdir()
    (root / "foreign" / "notes.txt").write_text("mine\n")
    old_cwd = os.getcwd()
    os.chdir(root / "work")
    try:
        yield home
    finally:
        os.chdir(old_cwd)
        shutil.rmtree(root, ignore_errors=True)


def files_of(home: Path) -> dict[str, bytes | None]:
    return {
        name: (home / name).read_bytes() if (home / name).is_file() else None
        for name in ("state.json", "config.json", "pki/ca.key")
    }


def check_outcome(outcome: Outcome, before: dict[str, bytes | None], home: Path) -> None:
    """The three promises, for one run."""
    event(f"exit code {outcome.exit_code}")  # shown by --hypothesis-show-statistics
    assert "Traceback" not in outcome.stderr
    if outcome.exit_code != 0:
        assert (outcome.stderr + outcome.stdout).strip(), "refused without a message"
        assert files_of(home) == before, "a refused command changed the home"
    if (home / "state.json").exists() and outcome.exit_code == 0:
        StateStore(home).load()  # whatever succeeded left a valid state
    assert (home / "pki" / "ca.key").read_bytes() == b"key\n"


# --- CLI arguments -------------------------------------------------------------------------------

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=24)
value = st.one_of(
    text,
    st.sampled_from(
        [
            *("", "local", "digitalocean", "cloudflare", "cloudflare-origin", "fra1", "demo"),
            *("planned", "-x", "a\nb", "fra1\n", "web.demo.test", "test", "0", "-1", "99"),
            *("s-1vcpu-2gb", "Demo", "a" * 80, "..", "/", "\x00"),
        ]
    ),
)


def flags(names: list[str]) -> st.SearchStrategy[list[str]]:
    pair = st.tuples(st.sampled_from(names), value).map(list)
    return st.lists(pair, max_size=4).map(lambda pairs: [word for p in pairs for word in p])


output_folder = st.sampled_from(
    [
        *("HOME", "HOME/..", "HOME/pki", "HOME/deploy-config/demo", ".", "..", "/proc/self/x"),
        *("../foreign", "new-out", "new-out/deeper", "", "/", "../home/state.json"),
    ]
)


@st.composite
def render_args(draw: st.DrawFn) -> list[str]:
    args = ["render", "--no-validate"]
    if draw(st.booleans()):
        args += ["--output", draw(output_folder)]
    return args


init_flags = ["--node-provider", "--dns-provider", "--region", "--size", "--cert-issuer"]
create_flags = ["--name", "--nodes", "--region", "--size", "--node-provider", "--dns-provider"]

command = st.one_of(
    flags([*init_flags, "--local-dns-zone"]).map(lambda f: ["init", *f]),
    flags(init_flags).map(lambda f: ["init", "--proxied", *f]),
    value.map(lambda name: ["context", "use", name]),
    st.sampled_from([["context", "current"], ["context", "clear"], ["cluster", "list"]]),
    st.sampled_from([["cluster", "show"], ["cluster", "show", "--json"], ["cluster", "bogus"]]),
    flags(create_flags).map(lambda f: ["cluster", "create", "--plan-only", *f]),
    render_args(),
)


@st.composite
def argv(draw: st.DrawFn) -> list[str]:
    prefix = ["--cluster", draw(value)] if draw(st.booleans()) else []
    return prefix + draw(command)


@SETTINGS
@given(args=argv())
def test_any_cli_arguments(args: list[str]) -> None:
    with sandbox() as home:
        args = [a.replace("HOME", str(home)) for a in args]
        before = files_of(home)
        outcome = run_dynia(home, *args)
        check_outcome(outcome, before, home)
        if outcome.exit_code == 0 and args[-2:-1] == ["--output"]:
            out = Path(args[-1]).resolve() if args[-1] else None
            assert out is None or (out / ".dynia-render").is_file()


# --- compose files -------------------------------------------------------------------------------

scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 70_000),
    text,
    st.sampled_from(["8080", "80:8080", "127.0.0.1:80:8080/tcp", "8080-8081", "²", "0", "99999"]),
)
json_like = st.recursive(
    scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)
port_entries = st.one_of(
    scalar,
    st.lists(st.one_of(scalar, st.fixed_dictionaries({"target": scalar})), max_size=3),
)
service_body = st.one_of(
    st.fixed_dictionaries(
        {"image": st.one_of(st.just("dynia-sample-web:1"), scalar)},
        optional={
            "ports": port_entries,
            "expose": port_entries,
            "build": json_like,
            "environment": st.dictionaries(st.one_of(text, st.integers()), scalar, max_size=2),
        },
    ),
    json_like,
)
compose_document = st.fixed_dictionaries(
    {
        "services": st.one_of(
            st.dictionaries(
                st.one_of(st.sampled_from(["web", "db"]), text),
                service_body,
                min_size=1,
                max_size=3,
            ),
            json_like,
        )
    },
    optional={"version": scalar, "volumes": json_like},
)
compose_text = st.one_of(
    compose_document.map(lambda d: yaml.safe_dump(d, sort_keys=False)),
    text,
    st.sampled_from(["[" * 600, "services: &a [*a]", "services:\n  web: {image: x, expose: 80}"]),
)


@SETTINGS
@given(compose=compose_text, port=st.one_of(st.none(), st.integers(-2, 70_000)))
def test_any_compose_file_is_used_or_refused_by_name(compose: str, port: int | None) -> None:
    try:
        document = parse_compose(compose, "web.yml")
        facts = inspect_compose(document, "web", port)
        rendered = node_compose(document, facts.main_service, 20000, facts.container_port)
    except (UsageError, RenderError) as exc:
        assert exc.message
        return
    assert 1 <= facts.container_port <= 65535
    main = yaml.safe_load(rendered)["services"][facts.main_service]
    assert main["ports"] == [f"127.0.0.1:20000:{facts.container_port}"]


class ImagesReached(UsageError):
    """Raised in place of the image check: the compose file passed every check before it."""


@SETTINGS
@given(
    compose=compose_text,
    extra=st.lists(
        st.sampled_from(["--port", "--health-path"]).flatmap(
            lambda flag: st.tuples(st.just(flag), value)
        ),
        max_size=2,
    ),
)
def test_deploy_with_any_compose_file_changes_nothing_before_the_nodes(
    compose: str, extra: list[tuple[str, str]]
) -> None:
    with sandbox() as home:
        path = home.parent / "work" / "web.yml"
        path.write_text(compose)
        before = files_of(home)
        stop = ImagesReached("compose file accepted", hint="the image check comes next")
        with mock.patch("dynia.operations.images.resolve_images", side_effect=stop):
            args = [word for pair in extra for word in pair]
            outcome = run_dynia(home, "deploy", "--name", "web", "--compose", str(path), *args)
        assert outcome.exit_code != 0
        check_outcome(outcome, before, home)


# --- hand-edited state ---------------------------------------------------------------------------

BASE_STATE: dict[str, Any] = json.loads((TEMPLATE / "state.json").read_text())


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, child in node.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += _paths(child, (*prefix, index))
    return found


DELETE = object()
state_value = st.one_of(
    json_like,
    st.sampled_from([None, "", 0, -1, 10**30, 1.5, [], {}, "0.0.0.0", "/", "demo", "web"]),
    st.just(DELETE),
)


def _at(path: tuple[Any, ...]) -> Any:
    node = BASE_STATE
    for key in path:
        node = node[key]
    return node


def _similar(original: Any) -> st.SearchStrategy[Any]:
    """Values of the original's own type: edits that pass the shape check reach deeper code."""
    if isinstance(original, bool):
        return st.booleans()
    if isinstance(original, int):
        return st.integers(-2, 70_000)
    if isinstance(original, float):
        return st.floats(allow_nan=False, allow_infinity=False)
    if isinstance(original, str):
        return st.one_of(text, st.sampled_from(["demo", "web", "misty-owl", "eth0", "10.0.0.1"]))
    return state_value


edit = st.sampled_from(_paths(BASE_STATE)).flatmap(
    lambda path: st.tuples(st.just(path), st.one_of(_similar(_at(path)), state_value))
)


def _apply(document: Any, path: tuple[Any, ...], new: Any) -> None:
    parent = document
    for key in path[:-1]:
        try:
            parent = parent[key]
        except (KeyError, IndexError, TypeError):
            return  # an earlier edit removed this branch
    with contextlib.suppress(KeyError, IndexError, TypeError):
        if new is DELETE:
            del parent[path[-1]]
        else:
            parent[path[-1]] = new


@SETTINGS
@given(
    edits=st.lists(edit, min_size=1, max_size=3),
    truncate=st.one_of(st.none(), st.integers(0, 4000)),
    args=st.sampled_from(
        [
            ["cluster", "list"],
            ["cluster", "show", "--json"],
            ["render", "--no-validate"],
            ["context", "current"],
            ["context", "use", "demo"],
        ]
    ),
)
def test_any_hand_edited_state(
    edits: list[tuple[tuple[Any, ...], Any]], truncate: int | None, args: list[str]
) -> None:
    document = json.loads(json.dumps(BASE_STATE))
    for path, new in edits:
        _apply(document, path, new)
    raw = json.dumps(document, indent=2).encode()
    with sandbox() as home:
        (home / "state.json").write_bytes(raw if truncate is None else raw[:truncate])
        before = files_of(home)
        check_outcome(run_dynia(home, *args), before, home)
