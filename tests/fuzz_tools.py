"""Mutations shared by the data fuzz tests: byte-level edits and edits of nested records."""
from __future__ import annotations

import copy

import numpy as np
from hypothesis import strategies as st

byte_op = st.tuples(st.sampled_from(["flip", "cut", "insert", "delete", "repeat"]), st.integers(0, 2 ** 20),
                    st.binary(min_size=1, max_size=12))


def mutate_bytes(content: bytes, ops) -> bytes:
  buf = bytearray(content)
  for op, at, payload in ops:
    i = at % len(buf) if buf else 0
    if op == "flip" and buf:
      buf[i] ^= payload[0] | 1
    elif op == "cut":
      buf = buf[:i]
    elif op == "insert":
      buf[i:i] = payload
    elif op == "delete":
      buf[i:i + 4 * len(payload)] = b""
    elif op == "repeat":
      buf[i:i] = buf[i:i + 16 * len(payload)]
  return bytes(buf)


def tree_paths(tree, prefix=()):
  """The key path of every node of nested dicts and lists, depth first."""
  items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
  for key, value in items:
    yield prefix + (key,)
    yield from tree_paths(value, prefix + (key,))


def mutate_tree(tree, ops):
  """A copy of nested dicts/lists with nodes deleted, replaced by a value, duplicated (list items)
  or cut short (arrays lose their last entry); ops are (op, which node, value)."""
  tree = copy.deepcopy(tree)
  for op, pick, value in ops:
    paths = list(tree_paths(tree))
    if not paths:
      break
    *head, key = paths[pick % len(paths)]
    parent = tree
    for k in head:
      parent = parent[k]
    if op == "delete":
      del parent[key]
    elif op == "replace":
      parent[key] = copy.deepcopy(value)  # never share (or nest) the hostile values themselves
    elif op == "duplicate" and isinstance(parent, list):
      parent.insert(key, copy.deepcopy(parent[key]))
    elif op == "cut" and isinstance(parent[key], np.ndarray) and parent[key].size:
      parent[key] = parent[key].reshape(-1)[:-1]
  return tree
