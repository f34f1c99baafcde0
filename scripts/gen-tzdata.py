#!/usr/bin/env python3
"""Regenerates the NANP data files embedded by `src/compliance/zones.rs`.

    pip install phonenumbers zipcodes
    python3 scripts/gen-tzdata.py

Writes (all committed; the Rust build and tests never run Python):
  data/nanp_prefix_zones.tsv  every +1 prefix -> IANA zones, from libphonenumber's
                              time-zone map (phonenumbers.tzdata), Apache-2.0
  data/nanp_area_codes.tsv    NPA -> ISO region + state/province, from libphonenumber's
                              region metadata and geocoding data, Apache-2.0
  data/us_zip3_states.tsv     US ZIP3 -> state(s), from the `zipcodes` package, MIT

data/state_zones.tsv (state/province -> zones) is written by hand and is not touched.
"""
import collections
import os
import sys

import phonenumbers
from phonenumbers import geodata, tzdata
import zipcodes

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data")

LIBPHONENUMBER_CREDIT = (
    "# Derived from libphonenumber (https://github.com/google/libphonenumber),\n"
    "# Copyright (C) Google Inc., licensed under the Apache License, Version 2.0.\n"
    "# Extracted from the Python port `phonenumbers` {v} by scripts/gen-tzdata.py.\n"
    "# Do not edit by hand: re-run the script.\n"
)

US_STATES = {
    "Alabama": "AL", "Alaska": "AK", "Arizona": "AZ", "Arkansas": "AR", "California": "CA",
    "Colorado": "CO", "Connecticut": "CT", "Delaware": "DE", "Florida": "FL", "Georgia": "GA",
    "Hawaii": "HI", "Idaho": "ID", "Illinois": "IL", "Indiana": "IN", "Iowa": "IA",
    "Kansas": "KS", "Kentucky": "KY", "Louisiana": "LA", "Maine": "ME", "Maryland": "MD",
    "Massachusetts": "MA", "Michigan": "MI", "Minnesota": "MN", "Mississippi": "MS",
    "Missouri": "MO", "Montana": "MT", "Nebraska": "NE", "Nevada": "NV",
    "New Hampshire": "NH", "New Jersey": "NJ", "New Mexico": "NM", "New York": "NY",
    "North Carolina": "NC", "North Dakota": "ND", "Ohio": "OH", "Oklahoma": "OK",
    "Oregon": "OR", "Pennsylvania": "PA", "Rhode Island": "RI", "South Carolina": "SC",
    "South Dakota": "SD", "Tennessee": "TN", "Texas": "TX", "Utah": "UT", "Vermont": "VT",
    "Virginia": "VA", "Washington": "WA", "Washington D.C.": "DC", "Washington, D.C.": "DC",
    "West Virginia": "WV", "Wisconsin": "WI", "Wyoming": "WY",
    "Puerto Rico": "PR", "U.S. Virgin Islands": "VI", "Guam": "GU",
    "American Samoa": "AS", "Northern Mariana Islands": "MP",
    "Alberta": "AB", "British Columbia": "BC", "Manitoba": "MB", "New Brunswick": "NB",
    "Newfoundland and Labrador": "NL", "Nova Scotia": "NS", "Ontario": "ON",
    "Prince Edward Island": "PE", "Quebec": "QC", "Saskatchewan": "SK",
    "Northwest Territories": "NT", "Nunavut": "NU", "Yukon": "YT",
    "Northwest Territories/Nunavut": "NT NU",
    "Yukon/Northwest Territories/Nunavut": "YT NT NU",
    "Nova Scotia/Prince Edward Island": "NS PE",
    "Nova Scotia and Prince Edward Island": "NS PE",
}
# US territories are their own ISO regions; their "state" is the territory.
TERRITORIES = {"PR", "VI", "GU", "AS", "MP"}
SUPPLEMENT = {"564": "WA", "257": "BC"}
CODES = set(c for v in US_STATES.values() for c in v.split())


def state_codes(description):
    if description in US_STATES:
        return US_STATES[description].split()
    if ", " in description:
        tail = description.rsplit(", ", 1)[1]
        if tail in CODES:
            return [tail]
        if tail in US_STATES:
            return US_STATES[tail].split()
    return []


def region_of(npa):
    """ISO region of an NPA: the region of the first valid number found in it."""
    for nxx in ("212", "234", "345", "456", "567", "678", "789", "800", "200", "300",
                "400", "500", "600", "700", "900", "222", "333", "444", "666", "777",
                "888", "999", "201", "301", "401", "501", "601", "701", "801", "901"):
        n = phonenumbers.parse("+1" + npa + nxx + "4567")
        if phonenumbers.is_valid_number(n):
            return phonenumbers.region_code_for_number(n) or ""
    return ""


def main():
    v = phonenumbers.__version__
    credit = LIBPHONENUMBER_CREDIT.format(v=v)

    rows = sorted((k, tzdata.TIMEZONE_DATA[k]) for k in tzdata.TIMEZONE_DATA if k.startswith("1"))
    with open(os.path.join(ROOT, "nanp_prefix_zones.tsv"), "w") as f:
        f.write(credit)
        f.write("# prefix (country code 1 included)\tIANA zones, comma-separated\n")
        for k, zones in rows:
            f.write(f"{k}\t{','.join(zones)}\n")
    print(f"nanp_prefix_zones.tsv: {len(rows)} rows", file=sys.stderr)

    # The area code's own entry ("1201" -> "New Jersey") decides; city-level entries
    # ("1201200" -> "Jersey City, NJ") only fill in NPAs that have no entry of their own.
    by_npa = collections.defaultdict(set)
    own = {}
    for k, desc in geodata.GEOCODE_DATA.items():
        if k.startswith("1") and len(k) >= 4 and "en" in desc:
            if len(k) == 4:
                own[k[1:4]] = set(state_codes(desc["en"]))
            else:
                by_npa[k[1:4]].update(state_codes(desc["en"]))
    for npa, states in own.items():
        if states:
            by_npa[npa] = states
    # Overlays newer than the geocoding data (checked against the NANPA assignment).
    for npa, st in SUPPLEMENT.items():
        by_npa.setdefault(npa, set()).add(st)
    n = 0
    with open(os.path.join(ROOT, "nanp_area_codes.tsv"), "w") as f:
        f.write(credit)
        f.write("# NPA\tISO region (blank: no valid number found)\tstates/provinces, comma-separated\n")
        for npa in range(200, 1000):
            s = str(npa)
            region = region_of(s)
            states = set(by_npa.get(s, ()))
            if region in TERRITORIES:
                states.add(region)
            states = sorted(states)
            if region or states:
                f.write(f"{s}\t{region}\t{','.join(states)}\n")
                n += 1
    print(f"nanp_area_codes.tsv: {n} rows", file=sys.stderr)

    zip3 = collections.defaultdict(set)
    for z in zipcodes.list_all():
        st = z["state"]
        if st in CODES:  # military APO/FPO "states" (AA, AE, AP) and freely associated states have no rules
            zip3[z["zip_code"][:3]].add(st)
    with open(os.path.join(ROOT, "us_zip3_states.tsv"), "w") as f:
        f.write("# US ZIP3 prefix -> state(s). Derived from the `zipcodes` Python package\n")
        f.write("# (https://github.com/seanpianka/zipcodes, MIT licence) by scripts/gen-tzdata.py.\n")
        f.write("# A ZIP3 that crosses a state line lists every state (all of them apply).\n")
        for k in sorted(zip3):
            f.write(f"{k}\t{','.join(sorted(zip3[k]))}\n")
    print(f"us_zip3_states.tsv: {len(zip3)} rows", file=sys.stderr)


if __name__ == "__main__":
    main()
