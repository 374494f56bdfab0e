"""Node Feature Discovery labels a task (or the operator) may require of its node.

Tenant input: only NFD's own label namespaces are accepted (`feature.node.kubernetes.io/NAME`,
`profile.node.kubernetes.io/NAME`, or a vendor's `VENDOR.feature.node.kubernetes.io/NAME` such as
`intel.feature.node.kubernetes.io/gpu`), so a task can narrow where it runs by hardware features
but never select nodes by other labels (a tenant's `nodeSelector` does that, and the OpenVINO
label always wins). `KEY` alone means `KEY=true`, the value NFD gives boolean features.
"""

from __future__ import annotations

import re

MAX_FEATURES = 16
PREFIX_MAX = 253  # a label prefix is a DNS subdomain
NAME_MAX = 63
VALUE_MAX = 63
FEATURE_MAX = PREFIX_MAX + 1 + NAME_MAX + 1 + VALUE_MAX
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_PREFIX = r"([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)*(feature|profile)\.node\.kubernetes\.io"
# The same rule as `parse_feature`, for the CRD (checked by the API server).
FEATURE_PATTERN = f"^{_PREFIX}/{_NAME}(={_NAME})?$"
ALLOWED = (
    "feature.node.kubernetes.io/NAME, profile.node.kubernetes.io/NAME or"
    " VENDOR.feature.node.kubernetes.io/NAME, optionally =VALUE (default true)"
)
_FEATURE = re.compile(FEATURE_PATTERN)


def parse_feature(text: str) -> tuple[str, str]:
    """`KEY[=VALUE]` as (key, value); ValueError naming the text and what is allowed."""
    if len(text) > FEATURE_MAX:  # (before the pattern: it bounds the matching work too)
        raise ValueError(f"{text[:80]!r}...: {len(text)} characters; at most {FEATURE_MAX}")
    if not _FEATURE.match(text):
        raise ValueError(f"{text!r} is not a Node Feature Discovery label (allowed: {ALLOWED})")
    key, _, value = text.partition("=")
    prefix, _, name = key.partition("/")
    if len(prefix) > PREFIX_MAX or len(name) > NAME_MAX or len(value) > VALUE_MAX:
        raise ValueError(
            f"{text[:80]!r}: a label prefix is at most {PREFIX_MAX} characters, its name and"
            f" value at most {NAME_MAX} each"
        )
    return key, value or "true"


def parse_features(items: list[str] | tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Every feature parsed, at most MAX_FEATURES, duplicates dropped (first one kept)."""
    if len(items) > MAX_FEATURES:
        raise ValueError(f"{len(items)} node features; at most {MAX_FEATURES} are allowed")
    parsed: list[tuple[str, str]] = []
    for item in items:
        feature = parse_feature(item)
        if feature not in parsed:
            parsed.append(feature)
    return tuple(parsed)
