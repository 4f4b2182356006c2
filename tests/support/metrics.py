"""Reading a served ``/metrics`` body back with prometheus_client's parser."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]


@dataclass
class Exposition:
    """Families by name (counters under their name without ``_total``, as
    the parser gives them) and every sample by (sample name, labels)."""

    types: dict[str, str]
    samples: dict[tuple[str, Labels], float]

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def series(self, name: str) -> dict[Labels, float]:
        """Every sample of the sample name ``name``, by its labels."""
        return {labels: v for (n, labels), v in self.samples.items() if n == name}

    def names(self) -> set[str]:
        return {n for n, _labels in self.samples}


def parse(text: str) -> Exposition:
    types: dict[str, str] = {}
    samples: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in types, f"family {family.name} shown twice"
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"sample {key} shown twice"
            samples[key] = sample.value
    return Exposition(types, samples)
