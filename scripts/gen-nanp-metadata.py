#!/usr/bin/env python3
"""Regenerates data/nanp_metadata.xml, embedded by `src/phone.rs`.

    python3 scripts/gen-nanp-metadata.py

The file is the +1 (NANP) part of the libphonenumber metadata the `phonenumber`
crate in Cargo.lock ships (its assets/PhoneNumberMetadata.xml): the 25 territories
with countryCode="1", unchanged. The worker checks a number's validity at the moment
of dialing against these 25 only, instead of loading the crate's whole-world
database (3.5 MB of heap); `phone::tests::fast_path_agrees_with_the_crate` checks the
two against each other. Re-run after upgrading the crate.
"""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

meta = json.loads(subprocess.check_output(
    ["cargo", "metadata", "--format-version", "1", "--locked"], cwd=ROOT))
pkg = next(p for p in meta["packages"] if p["name"] == "phonenumber")
src = os.path.join(os.path.dirname(pkg["manifest_path"]), "assets", "PhoneNumberMetadata.xml")
text = open(src, encoding="utf-8").read()

licence = re.search(r"<!--.*?-->", text, re.S).group(0)
territories = re.findall(r"\n    <territory [^>]*?countryCode=\"1\".*?\n    </territory>", text, re.S)
if len(territories) != 25:
    sys.exit(f"expected the 25 NANP territories in {src}, found {len(territories)}")

out = os.path.join(ROOT, "data", "nanp_metadata.xml")
with open(out, "w", encoding="utf-8") as f:
    f.write(licence + "\n")
    f.write(f"<!-- The countryCode=\"1\" territories of phonenumber {pkg['version']}'s "
            "assets/PhoneNumberMetadata.xml,\n     extracted by scripts/gen-nanp-metadata.py. "
            "Do not edit by hand: re-run the script. -->\n")
    f.write("<phoneNumberMetadata>\n  <territories>")
    f.write("".join(territories))
    f.write("\n  </territories>\n</phoneNumberMetadata>\n")
print(f"wrote {out}: {len(territories)} territories from {src}")
