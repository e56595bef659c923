"""Tiny data sets in the exact formats of the real files, written by the tests."""

import os
import zipfile
from pathlib import Path

# shared/data holds copies of the real files; tests using them skip when it is absent.
_REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("METRICREC_SHARED_DATA", _REPO.parent / "shared" / "data"))

ML1M_RATINGS = (
    "1::1193::5::978300760\n"
    "1::661::3::978302109\n"
    "1::914::3::978301968\n"
    "2::1193::4::978298413\n"
    "2::3408::4::978299039\n"
    "3::661::5::978297867\n"
)
ML1M_MOVIES = (
    "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
    "914::My Fair Lady (1964)::Musical|Romance\n"
    "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
    "3408::Erin Brockovich (2000)::Drama\n"
    "3952::Contender, The (2000)::Drama|Thriller\n"
)
ML1M_USERS = "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n"

ML100K_DATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t302\t5\t881250950\n22\t242\t4\t878887116\n"
ML100K_GENRE = "unknown|0\nAction|1\nComedy|2\n\n"
ML100K_ITEMS = (
    "242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya%20(1996)|0|0|1\n"
    "302|L.A. Confidential (1997)|01-Jan-1997||http://us.imdb.com/x|0|1|0\n"
    "999|Caf\xe9 Nowhere (1989)|||http://x|1|0|0\n"
)
ML100K_USERS = "22|25|M|writer|40206\n186|39|F|executive|00000\n196|49|M|writer|55105\n"


def write_ml1m(root: Path) -> Path:
    folder = root / "ml-1m"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text(ML1M_RATINGS)
    (folder / "movies.dat").write_bytes(ML1M_MOVIES.encode("iso-8859-1"))
    (folder / "users.dat").write_text(ML1M_USERS)
    return folder


def ml100k_files() -> dict:
    return {
        "u.data": ML100K_DATA.encode(),
        "u.genre": ML100K_GENRE.encode(),
        "u.item": ML100K_ITEMS.encode("iso-8859-1"),
        "u.user": ML100K_USERS.encode(),
    }


def write_ml100k(root: Path) -> Path:
    folder = root / "ml-100k"
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in ml100k_files().items():
        (folder / name).write_bytes(data)
    return folder


def make_zip(path: Path, members: dict) -> Path:
    """Zip with the given {member name: bytes}; names are stored verbatim (even '../x')."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path
