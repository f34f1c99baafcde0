#!/usr/bin/env python3
# Writes N unique, valid NANP numbers (single-zone area codes; no N11, 555, 950, 958,
# 959 or 976 exchanges) as a contacts CSV: gen_contacts.py N OUT.csv
import sys, random
# Unique, valid NANP numbers in single-zone area codes (no N11, 555, 950/958/959/976 exchanges).
n = int(sys.argv[1]); out = sys.argv[2]
areas = ["212", "312", "415", "617", "713", "206", "404", "303"]
exch = [e for e in range(201, 1000) if not (e % 100 == 11) and e not in (555, 950, 958, 959, 976) and e // 100 >= 2]
random.seed(7)
with open(out, "w") as f:
    f.write("phone,external_id\n")
    i = 0
    for a in areas:
        for e in exch:
            for s in range(0, 10000, 53):
                if i >= n: break
                f.write(f"+1{a}{e}{s:04d},c{i}\n"); i += 1
    assert i == n, i
