"""Published width laws the measured ones are set beside, in one place.

Exponents of ``m ~ n^p k^q`` as the papers state them; none gives the constant.  The plain-L2
results (``k = 0``) compare with the ``k = 0`` group of the study, which trains values only.
"""

from __future__ import annotations

import pandas as pd

# method, term, estimate, the statement (what the exponent is the exponent of)
KNOWN_LAWS = (
    ("cocola_hand_2020", "p", 6.0, "Theorem 1 (Sobolev, no bias): m = Omega(n^6 k^3 gamma^2 / (lambda_*^4 delta^3))"),
    ("cocola_hand_2020", "q", 3.0, "Theorem 1 (Sobolev, no bias): m = Omega(n^6 k^3 gamma^2 / (lambda_*^4 delta^3))"),
    ("du_2019", "p", 6.0, "Du et al. 2019, plain L2 (k = 0): m = Omega(n^6 / (lambda_0^4 delta^3))"),
    ("song_yang_2019", "p", 2.0, "Song & Yang 2019, plain L2 (k = 0): m = Omega(n^2) up to lambda_0 and log factors"),
    ("oymak_soltanolkotabi_2020", "p", 1.0,
     "Oymak & Soltanolkotabi 2020: parameter count m d ~ number of equations n (k + 1), up to condition factors"),
    ("oymak_soltanolkotabi_2020", "q", 1.0,
     "Oymak & Soltanolkotabi 2020: m d ~ n (k + 1): linear in k + 1 (not a power of k), compare at large k"),
)


def known_laws() -> pd.DataFrame:
    """The published exponents as rows ``quantity="known", method, term, estimate, note``."""
    return pd.DataFrame([{"quantity": "known", "method": method, "term": term, "estimate": value, "note": note}
                         for method, term, value, note in KNOWN_LAWS])
