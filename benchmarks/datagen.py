"""Deterministic test data: JSON Lines records shaped like an account export (~280 bytes each).

Files are generated once into ``benchmarks/data/`` (gitignored) and reused. The generator is
seeded and sequential, so the file of N records is the first N lines of any larger one.
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

__all__ = ["DATA_DIR", "data_file", "generate"]

DATA_DIR = Path(__file__).resolve().parent / "data"
SEED = 20240601


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_FIRST = _words(
    "Maria Jonas Emma Liam Sofia Noah Mia Lukas Hannah Elias Lea Felix Anna Paul Lina Ben Clara "
    "Leon Ida Finn Marie Jakob Ella Anton Nora Oskar Greta Henry Luisa Emil"
)
_LAST = _words(
    "Keller Schmidt Novak Rossi Garcia Dubois Jensen Kowalski Silva Nagy Horvat Weber Lindqvist "
    "Moreau Fischer Bauer Costa Ricci Meyer Varga Berg Martin Bernard Hofmann Wagner Lang"
)
_CITIES = (
    ("Berlin", "DE", "EUR"),
    ("Vienna", "AT", "EUR"),
    ("Zurich", "CH", "CHF"),
    ("Lyon", "FR", "EUR"),
    ("Milan", "IT", "EUR"),
    ("Krakow", "PL", "PLN"),
    ("Porto", "PT", "EUR"),
    ("Malmo", "SE", "SEK"),
    ("Leeds", "GB", "GBP"),
    ("Austin", "US", "USD"),
)
_STREETS = _words("Linden Oak Mill Station Church Garden Market Harbour River Castle")
_SUFFIX = _words("Street Road Lane Way Avenue")
_STATUS = ("active", "active", "active", "suspended", "closed", "pending")


def _line(i: int, rnd: random.Random) -> str:
    first = rnd.choice(_FIRST)
    last = rnd.choice(_LAST)
    city, country, currency = rnd.choice(_CITIES)
    created = 1_500_000_000 + rnd.randrange(200_000_000)
    updated = created + rnd.randrange(50_000_000)
    return (
        f'{{"id":"ACC-{i:09d}","name":"{first} {last}",'
        f'"email":"{first.lower()}.{last.lower()}{i % 1000}@example.com",'
        f'"phone":"+{rnd.randrange(10, 99)} {rnd.randrange(100, 999)} '
        f'{rnd.randrange(1000000, 9999999)}",'
        f'"street":"{rnd.randrange(1, 300)} {rnd.choice(_STREETS)} {rnd.choice(_SUFFIX)}",'
        f'"city":"{city}","zip":"{rnd.randrange(10000, 99999)}","country":"{country}",'
        f'"balance":{rnd.randrange(-500000, 5000000) / 100:.2f},"currency":"{currency}",'
        f'"status":"{rnd.choice(_STATUS)}","created_at":{created},"updated_at":{updated}}}\n'
    )


def generate(path: Path, records: int, *, seed: int = SEED) -> None:
    """Write ``records`` lines to ``path`` atomically (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="ascii", buffering=1 << 20) as f:
        chunk: list[str] = []
        for i in range(1, records + 1):
            chunk.append(_line(i, rnd))
            if len(chunk) == 10_000:
                f.write("".join(chunk))
                chunk.clear()
        f.write("".join(chunk))
    tmp.replace(path)


def data_file(records: int, data_dir: Path = DATA_DIR) -> Path:
    """Return the path of the file with ``records`` records, generating it on first use."""
    path = data_dir / f"accounts-{records}.jsonl"
    if not path.exists():
        generate(path, records)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("records", type=int)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    args = parser.parse_args()
    print(data_file(args.records, args.data_dir))


if __name__ == "__main__":
    main()
