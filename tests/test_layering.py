"""No module imports from a layer above its own: the package layout is the architecture (snella_seg/__init__.py)."""
import ast
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = 'snella_seg'
# The snella_seg layers each one may import (besides itself; '' is the package root, which registers everything);
# tools/ may use the public API only. tools/analysis/ measures the method from inside (its kernels' selection, its
# allocator, the checkpoints it writes, the arch table it narrows encoders by), so it may also import the method,
# utils and models, but builds models, hooks and metrics through mmseg's registries, as a config does.
ALLOWED: Dict[str, Tuple[str, ...]] = {
    'snella': (),
    'utils': (),
    'methods': ('snella', 'utils'),
    'models': ('snella', 'utils', 'methods'),
    'datasets': ('utils',),
    'evaluation': ('utils',),
    'engine': ('snella', 'utils', 'methods', 'models', 'datasets', 'evaluation'),
    'apis': ('', 'snella', 'utils', 'methods', 'models', 'datasets', 'evaluation', 'engine'),
    'deploy': ('', 'snella', 'utils', 'methods', 'models', 'datasets', 'evaluation', 'engine', 'apis'),
}
TOOLS_MAY_IMPORT = ('apis', 'deploy', 'datasets')
ANALYSIS_TOOLS_MAY_IMPORT = TOOLS_MAY_IMPORT + ('snella', 'utils', 'models')
TOOLS = REPO / 'tools'
ANALYSIS_TOOLS = TOOLS / 'analysis'


def imported_modules(source: str, module: str, is_package: bool) -> Iterator[Tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, the module named ``module``."""
    package = module.split('.') if is_package else module.split('.')[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = '.'.join(base + ([node.module] if node.module else []))
            if node.module:
                yield node.lineno, target
            else:  # `from . import engine`: each name is a module
                for alias in node.names:
                    yield node.lineno, f'{target}.{alias.name}'


def layer_of(module: str) -> str:
    """'engine' for 'snella_seg.engine.hooks'; '' for snella_seg itself and anything outside it."""
    parts = module.split('.')
    return parts[1] if parts[0] == PACKAGE and len(parts) > 1 else ''


def violations(source: str, module: str, is_package: bool, allowed: Tuple[str, ...]) -> List[str]:
    own = layer_of(module)
    found = []
    for line, target in imported_modules(source, module, is_package):
        if target.split('.')[0] != PACKAGE:
            continue
        layer = layer_of(target)
        if layer != own and layer not in allowed:
            found.append(f'{module}:{line} imports {target}')
    return found


def library_modules() -> Iterator[Tuple[Path, str, bool]]:
    for path in sorted((REPO / PACKAGE).rglob('*.py')):
        parts = list(path.relative_to(REPO).with_suffix('').parts)
        is_package = parts[-1] == '__init__'
        yield path, '.'.join(parts[:-1] if is_package else parts), is_package


@pytest.mark.parametrize('layer', sorted(ALLOWED))
def test_a_layer_imports_only_the_layers_below_it(layer):
    found = [v for path, module, is_package in library_modules() if layer_of(module) == layer
             for v in violations(path.read_text(), module, is_package, ALLOWED[layer])]
    assert not found, f'{layer}/ may import only {ALLOWED[layer] or "itself"} of snella_seg: {found}'


def test_every_library_folder_has_a_layer():
    folders = {path.parent.name for path in (REPO / PACKAGE).glob('*/__init__.py')}
    assert folders == set(ALLOWED)


def test_tools_use_only_the_public_api():
    found = [v for path in sorted(TOOLS.glob('*.py'))
             for v in violations(path.read_text(), f'tools.{path.stem}', False, TOOLS_MAY_IMPORT)]
    assert not found, f'tools/ may import only snella_seg.{{{",".join(TOOLS_MAY_IMPORT)}}}: {found}'


def test_analysis_tools_use_the_public_api_the_method_utils_and_models_only():
    found = [v for path in sorted(ANALYSIS_TOOLS.glob('*.py'))
             for v in violations(path.read_text(), f'tools.analysis.{path.stem}', False, ANALYSIS_TOOLS_MAY_IMPORT)]
    assert not found, f'tools/analysis/ may import only snella_seg.{{{",".join(ANALYSIS_TOOLS_MAY_IMPORT)}}}: {found}'


def test_every_python_file_of_tools_is_checked():
    assert set(TOOLS.rglob('*.py')) == set(TOOLS.glob('*.py')) | set(ANALYSIS_TOOLS.glob('*.py'))


def test_tools_do_not_edit_the_import_path():
    """A tool finds snella_seg as installed (or on PYTHONPATH), and its siblings in its own folder, which Python puts
    first on the path of a script it runs."""
    found = [f'{path.relative_to(REPO)}:{number}' for path in sorted(TOOLS.rglob('*.py'))
             for number, line in enumerate(path.read_text().splitlines(), start=1) if 'sys.path' in line]
    assert not found, f'tools/ edit sys.path: {found}'


def test_a_relative_import_from_a_higher_layer_is_caught():
    source = 'from ..engine.hooks import SNELLAAllocatorHook\n'
    assert violations(source, 'snella_seg.models.snella_backbone', False, ALLOWED['models']) == [
        'snella_seg.models.snella_backbone:1 imports snella_seg.engine.hooks']


def test_a_package_importing_its_sibling_layer_by_name_is_caught():
    assert violations('from .. import apis\n', 'snella_seg.utils', True, ALLOWED['utils']) == [
        'snella_seg.utils:1 imports snella_seg.apis']
