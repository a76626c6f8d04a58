"""The repository itself: layout, the README's commands, documented errors, and no remote code."""
import ast
import re
from pathlib import Path

from conftest import ROOT

TOP_LEVEL = ["__init__.py", "nodes", "sa2va", "install.py", "requirements.txt", "test_sa2va.py", "docs", "README.md",
             "TROUBLESHOOTING.md", "LICENSE", "tests", "pyproject.toml", ".ci/run"]


def test_mission_layout_exists():
    missing = [p for p in TOP_LEVEL if not (ROOT / p).exists()]
    assert not missing


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    command = "python -m pytest -q tests --durations=15"
    assert any(b.strip() == command for b in blocks)
    ci = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert command in ci


def test_requirements_never_pull_torch():
    names = [re.split(r"[<>=!~ ;\[]", line.strip())[0].lower() for line in
             (ROOT / "requirements.txt").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert "torch" not in names and "torchvision" not in names


def _library_sources():
    return [p for p in (ROOT / "sa2va").rglob("*.py")] + [p for p in (ROOT / "nodes").rglob("*.py")] + \
        [ROOT / "__init__.py", ROOT / "install.py"]


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else \
                ("" if isinstance(func, ast.Name) else "?")
            yield owner, name, node


def test_no_remote_code_no_eval_no_runtime_installs():
    offenders = []
    for path in _library_sources():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("subprocess", "pip") for n in names):
                    offenders.append(f"{path.name}: imports {names}")
        for owner, name, call in _calls(tree):
            if name in ("eval", "exec") and owner == "" or (owner, name) == ("os", "system"):
                offenders.append(f"{path.name}: calls {name}")
            for kw in call.keywords:
                explicit_false = isinstance(kw.value, ast.Constant) and kw.value.value is False
                if kw.arg == "trust_remote_code" and not explicit_false:
                    offenders.append(f"{path.name}: trust_remote_code={ast.unparse(kw.value)}")
    assert not offenders


def test_the_scan_above_would_catch_remote_code(tmp_path):
    tree = ast.parse("AutoModel.from_pretrained(p, trust_remote_code=True)\neval('1')")
    found = [(n, [k.arg for k in c.keywords]) for _, n, c in _calls(tree)]
    assert ("from_pretrained", ["trust_remote_code"]) in found and ("eval", []) in found


def test_library_never_imports_comfyui():
    for path in (ROOT / "sa2va").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(comfy|folder_paths|comfy_api)\b", text, flags=re.M), path


def raised_messages(folder: Path) -> list[tuple[str, str]]:
    """(file, message with placeholders as '...') of every exception raised with a message in ``folder``."""
    out = []
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
                arg = node.exc.args[0]
                if isinstance(arg, ast.JoinedStr):
                    text = "".join(v.value if isinstance(v, ast.Constant) else "..." for v in arg.values)
                elif isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    text = arg.value
                else:
                    continue
                out.append((path.name, text))
    return out


def documented_key(message: str) -> str:
    """The fixed words TROUBLESHOOTING.md must quote for a message: the first 3 words of its first literal run of
    at least 3 words."""
    for run in message.split("..."):
        words = run.strip(" :,.;()'\"").split()
        if len(words) >= 3:
            return " ".join(words[:3]).rstrip(":,;.(")
    return message.strip()


def test_every_error_message_is_in_troubleshooting():
    doc = (ROOT / "TROUBLESHOOTING.md").read_text()
    internal = ("unknown ", "quantization must be None")  # programming errors, not user-facing
    found = raised_messages(ROOT / "sa2va") + raised_messages(ROOT / "nodes")
    # a message made only of placeholders re-raises another (documented) message with more context
    messages = [(f, m) for f, m in found if not m.startswith(internal) and m.replace("...", "").strip()]
    assert len(messages) > 25
    missing = [(f, m) for f, m in messages if documented_key(m) not in doc]
    assert not missing, missing


def test_markdown_links_resolve():
    for doc in [ROOT / "README.md", ROOT / "TROUBLESHOOTING.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)\)", doc.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            assert (doc.parent / target).exists(), f"{doc.name}: {target}"


def test_repository_paths_named_in_the_docs_exist():
    """`path/like.py` spans in the docs that point into this repository must exist (tests::names allowed)."""
    docs = [ROOT / "README.md", ROOT / "TROUBLESHOOTING.md", *sorted((ROOT / "docs").glob("*.md"))]
    top_level = {p.name for p in ROOT.iterdir()}
    missing = []
    for doc in docs:
        for span in re.findall(r"`([A-Za-z0-9_./-]+\.(?:py|md|json|png|jpg))(?:::[\w\[\]-]+)?`", doc.read_text()):
            if "/" in span and span.split("/")[0] in top_level and not (ROOT / span).exists():
                missing.append(f"{doc.name}: {span}")
    assert not missing


def _code_files() -> list[Path]:
    folders = ("sa2va", "nodes", "tests", "bench", "docs")
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py")) + sorted(ROOT.glob("*.py"))


def _comments_and_docstrings(path: Path) -> str:
    import io
    import tokenize

    parts = []
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if token.type == tokenize.COMMENT or token.type == tokenize.STRING:
            parts.append(token.string)
    return "\n".join(parts)


def test_every_document_the_code_cites_exists():
    """A ``*.md`` named in a comment or docstring must be a file of this repository (under docs/ or at the top level)."""
    missing = []
    for path in _code_files():
        for name in set(re.findall(r"[\w./-]*\w\.md\b", _comments_and_docstrings(path))):
            if not ((ROOT / name).is_file() or (ROOT / "docs" / name).is_file()):
                missing.append(f"{path.relative_to(ROOT)}: {name}")
    assert not missing, missing


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported project module, names taken from it) for every import in ``path`` (relative ones resolved)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                # the pack imports sa2va as ..sa2va from nodes/ (ComfyUI imports the pack as a package)
                target = ".".join([p for p in base if p] + ([node.module] if node.module else []))
                if not base or not base[0]:
                    target = node.module or ""
            else:
                target = node.module or ""
            out.append((target, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
    return [(t, n) for t, n in out if t.split(".")[0] in ("sa2va", "nodes")]


def test_no_private_name_is_imported_across_modules():
    offenders = []
    for path in _code_files():
        for target, names in _project_imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private or any(part.startswith("_") and not part.startswith("__") for part in target.split(".")):
                offenders.append(f"{path.relative_to(ROOT)}: from {target} import {', '.join(private)}")
    assert not offenders, offenders


def test_library_and_nodes_have_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for folder in ("sa2va", "nodes"):
        for path in (ROOT / folder).rglob("*.py"):
            module = _module_name(path)
            edges = graph.setdefault(module, set())
            for target, names in _project_imports(path):
                for candidate in [f"{target}.{n}" for n in names] + [target]:
                    if candidate != module and (ROOT / Path(*candidate.split("."))).with_suffix(".py").exists() or \
                            (ROOT / Path(*candidate.split(".")) / "__init__.py").exists():
                        if candidate != module:
                            edges.add(candidate)
                        break
    cycles = []

    def visit(node, stack, done):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in done:
            return
        for nxt in graph.get(node, ()):
            visit(nxt, stack + [node], done)
        done.add(node)

    done: set[str] = set()
    for module in sorted(graph):
        visit(module, [], done)
    # a package's __init__ re-exporting its submodules is not a cycle worth reporting; everything else is
    real = [c for c in cycles if not any(a == b.rpartition(".")[0] or b == a.rpartition(".")[0]
                                         for a, b in zip(c, c[1:]))]
    assert not real, real


def _minimums(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.strip().strip('",')
        if line and not line.startswith("#"):
            name, _, minimum = line.partition(">=")
            out[name.strip().lower()] = minimum.strip()
    return out


def test_requirements_and_pyproject_repeat_the_minimums_of_sa2va_compat():
    """sa2va/compat.py is the one table of minimum versions; the files pip reads must say the same."""
    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from sa2va.compat import MIN_PYTHON, MINIMUM_VERSIONS

    # torch is never listed (ComfyUI's own build stays); bitsandbytes is the optional "quantization" extra
    expected = {name.lower(): v for name, v in MINIMUM_VERSIONS.items() if name not in ("torch", "bitsandbytes")}
    assert _minimums((ROOT / "requirements.txt").read_text().splitlines()) == expected
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert _minimums(project["dependencies"]) == expected
    assert _minimums(project["optional-dependencies"]["quantization"]) == {"bitsandbytes": MINIMUM_VERSIONS["bitsandbytes"]}
    assert project["requires-python"] == ">=" + ".".join(map(str, MIN_PYTHON))


def _requirement_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _requirement_name(line: str) -> str:
    return re.split(r"[<>=!~ ;\[]", line)[0].lower().replace("-", "_")


#: distribution name -> the module it installs, where they differ
MODULE_OF = {"pillow": "PIL"}


def _imported_modules() -> set[str]:
    """Top-level names of every module the pack's code imports (the library, the nodes, the entry point)."""
    found = set()
    for path in [*(ROOT / "sa2va").rglob("*.py"), *(ROOT / "nodes").rglob("*.py"), ROOT / "__init__.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_every_requirement_is_imported_by_the_code():
    """requirements.txt lists what the code uses, nothing it does not (e.g. no unused qwen_vl_utils)."""
    imported = _imported_modules()
    names = [_requirement_name(line) for line in _requirement_lines((ROOT / "requirements.txt").read_text())]
    assert names, "requirements.txt lists nothing"
    unused = [n for n in names if MODULE_OF.get(n, n) not in imported]
    assert not unused, f"listed in requirements.txt but imported nowhere: {unused}"


def test_the_import_scan_above_sees_imports(tmp_path):
    tree = ast.parse("import PIL.Image\nfrom tqdm import tqdm\nfrom . import x\ndef f():\n    import accelerate\n")
    found = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    found |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert found == {"PIL", "tqdm", "accelerate"}


def test_pyproject_dependencies_are_requirements_txt_and_bitsandbytes_is_an_extra():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = _requirement_lines((ROOT / "requirements.txt").read_text())
    assert project["dependencies"] == requirements
    assert "bitsandbytes" not in [_requirement_name(line) for line in requirements]
    assert project["optional-dependencies"]["quantization"] == ["bitsandbytes>=0.45"]


def test_one_minimum_transformers_version_everywhere():
    """sa2va/compat.py holds the oldest supported transformers; the requirements, pyproject and README agree with
    it, and nothing pins an upper bound (an installed newer transformers is left alone)."""
    from sa2va.compat import MIN_TRANSFORMERS_TEXT, TRANSFORMERS_REQUIREMENT

    assert TRANSFORMERS_REQUIREMENT in _requirement_lines((ROOT / "requirements.txt").read_text())
    assert f'"{TRANSFORMERS_REQUIREMENT}"' in (ROOT / "pyproject.toml").read_text()
    assert f"transformers {MIN_TRANSFORMERS_TEXT} or newer" in (ROOT / "README.md").read_text()
    assert f"transformers=={MIN_TRANSFORMERS_TEXT}.*" in (ROOT / ".ci/run").read_text()


def test_registry_metadata():
    """The Comfy Registry's rules: a unique node id without "ComfyUI", a publisher, and an icon the repo holds."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    name = config["project"]["name"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*([._-][A-Za-z0-9]+)*", name) and len(name) < 100
    assert "comfyui" not in name.lower() and name != "comfyui-sa2va"
    comfy = config["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    repository = config["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{repository}/main/"
    assert comfy["Icon"].startswith(prefix) and (ROOT / comfy["Icon"].removeprefix(prefix)).is_file()
    workflow = (ROOT / ".github/workflows/publish.yml").read_text()
    assert "Comfy-Org/publish-node-action" in workflow and "pyproject.toml" in workflow
