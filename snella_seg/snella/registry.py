"""What the kernel, mask and method registries share: adding an entry by name, and looking one up with a clear error."""
from typing import Dict, TypeVar

Entry = TypeVar('Entry')


def add_entry(registry: Dict[str, Entry], entry: Entry, kind: str, replace: bool) -> Entry:
    """Register ``entry`` under its ``name``.

    Args:
        registry: The table, name -> entry.
        entry: Anything with a ``name``.
        kind: What an entry is (``'kernel'``), for the error message.
        replace: Override an entry of the same name instead of refusing it.

    Returns:
        ``entry``.

    Raises:
        ValueError: The name is taken and ``replace`` is False.
    """
    if entry.name in registry and not replace:
        raise ValueError(f'a {kind} named {entry.name!r} is already registered; pick another name, or pass '
                         'replace=True to override it')
    registry[entry.name] = entry
    return entry


def find_entry(registry: Dict[str, Entry], name: str, kind: str, register: str) -> Entry:
    """The entry registered under ``name``.

    Args:
        registry: The table, name -> entry.
        name: The name asked for.
        kind: What an entry is (``'kernel'``), for the error message.
        register: The qualified name of the function that adds entries, for the error message.

    Returns:
        The entry.

    Raises:
        ValueError: Nothing is registered under ``name``; the message lists what is.
    """
    try:
        return registry[name]
    except (KeyError, TypeError):
        raise ValueError(f'unknown {kind} {name!r}; choose one of {tuple(registry)}, or register yours with '
                         f'{register}') from None
