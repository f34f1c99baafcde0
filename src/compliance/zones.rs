//! Time-zone and geography data: NANP prefix -> zones (libphonenumber, Apache-2.0),
//! NPA -> region and state, state/province -> zones, US ZIP3 -> state, Canadian
//! postal-code letter -> province. All embedded with `include_str!` and parsed once.

use chrono_tz::Tz;
use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

pub const PREFIX_ZONES_TSV: &str = include_str!("../../data/nanp_prefix_zones.tsv");
pub const AREA_CODES_TSV: &str = include_str!("../../data/nanp_area_codes.tsv");
pub const STATE_ZONES_TSV: &str = include_str!("../../data/state_zones.tsv");
pub const ZIP3_TSV: &str = include_str!("../../data/us_zip3_states.tsv");

/// Overlay area codes -> the area code they overlay (same territory, so the same
/// candidate zones, region and states). Source: the North American Numbering Plan
/// Administrator's overlay assignments (NANPA NPA relief planning letters, as announced by
/// the state commissions and the CRTC). `Tables::parse` gives each overlay its parent's
/// zones *in addition to* any the data has for it (zones only widen: every candidate zone
/// must allow the call, 47 CFR 64.1200(c)(1), 16 CFR 310.4(c)), and its parent's region
/// and states when the data has none. Pairs whose overlay the data already gives exactly
/// its parent's zones (e.g. 326/937, 945/214) are not listed: they would change nothing.
pub const OVERLAYS: &[(u16, u16)] = &[
    // In the data, but with fewer zones than the parent.
    (448, 850), // FL panhandle: the data has Eastern only, 850 is Eastern and Central
    (364, 270), // KY: Eastern only in the data, 270 is Eastern and Central
    (930, 812), // IN: Eastern only in the data, 812 is Eastern and Central
    (458, 541), // OR: Pacific only in the data, 541 is Pacific and Mountain
    (689, 407), // FL (Orlando): the data says Central, 407 is Eastern
    (986, 208), // ID: the data lacks 208's Mountain exchanges
    (474, 306), // SK: the data says Winnipeg, 306 is Regina (no daylight time)
    (879, 709), // NL: the data lacks 709's Atlantic (Labrador) exchanges
    (236, 250), // BC (250/604/778 complex): the data lacks 250's Mountain exchanges
    (257, 250),
    (672, 250),
    (367, 418), // QC: the data lacks 418's Atlantic exchanges
    (581, 418),
    // Not in the data at all (newer than libphonenumber's tables).
    (357, 559), // CA, in service 2025
    (436, 440), // OH, in service 2024
    (457, 318), // LA, in service 2025
    (624, 716), // NY, in service 2023
    (729, 423), // TN, in service 2025; 423 is Eastern and Central
    (861, 309), // IL (Peoria, west-central), in service 2023; it overlays 309, not 815
];

/// The parsed tables.
pub struct Tables {
    /// (digits after the country code, as a number; how many digits) -> zone set.
    prefixes: HashMap<(u8, u32), u16>,
    sets: Vec<Vec<Tz>>,
    area_codes: HashMap<u16, (String, Vec<String>)>,
    states: HashMap<String, StateZones>,
    zip3: HashMap<u16, Vec<String>>,
    /// 50 states + DC + PR + USVI (SPEC.md section 6; not Guam or the Pacific territories).
    us_all: Vec<Tz>,
    ca_all: Vec<Tz>,
}

/// One state's or province's row of `data/state_zones.tsv`.
#[derive(Debug, Clone)]
pub struct StateZones {
    pub country: String,
    /// True when the state spans zones (every zone is a candidate).
    pub split: bool,
    pub zones: Vec<Tz>,
}

/// What the number's prefix says about its zones.
#[derive(Debug, Clone, PartialEq)]
pub enum PrefixZones<'a> {
    /// A geographic prefix: the matched prefix (with the country code) and its zones.
    Geographic(String, &'a [Tz]),
    /// Only the whole-country row matched (toll-free, non-geographic, unassigned).
    NonGeographic,
}

pub static TABLES: LazyLock<Tables> = LazyLock::new(Tables::parse);

fn rows(tsv: &str) -> impl Iterator<Item = Vec<&str>> {
    tsv.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split('\t').collect())
}

fn tz(name: &str) -> Tz {
    // The data files are committed and checked by `every_zone_name_in_the_data_is_known`.
    name.parse()
        .unwrap_or_else(|_| panic!("unknown IANA zone in embedded data: {name}"))
}

fn add_zones(into: &mut Vec<Tz>, zones: &[Tz]) {
    for z in zones {
        if !into.contains(z) {
            into.push(*z);
        }
    }
}

/// The union of the zones of `prefix`'s row and of every longer row under it.
fn zones_under(rows: &BTreeMap<&str, Vec<Tz>>, prefix: &str) -> Vec<Tz> {
    let mut out = Vec::new();
    for (_, z) in rows
        .range(prefix..)
        .take_while(|(p, _)| p.starts_with(prefix))
    {
        add_zones(&mut out, z);
    }
    out
}

/// The prefix rows as the lookup uses them (national digits -> zones). Zones only widen
/// (SPEC.md section 6: every candidate zone must allow the call, 47 CFR 64.1200(c)(1),
/// 16 CFR 310.4(c)):
/// - a row answers for every number under it that no longer row matches (an exchange the
///   data does not list), and such a number may be anywhere its area code is: so a row
///   gets the union of its own zones and those of every longer row under it (an unlisted
///   850 exchange waits for Eastern and Central);
/// - an overlay area code (`OVERLAYS`) covers its parent's whole territory: its rows
///   shorter than a whole exchange (NPA-NXX) also get every zone of the parent, and it
///   gets an area-code row if the data has none.
///
/// A listed exchange (an NPA-NXX row, or a row under it) keeps exactly its own zones.
/// The whole-country row is not part of this: it is never a geographic answer.
fn widened_prefix_rows(file: &BTreeMap<&str, Vec<Tz>>) -> BTreeMap<String, Vec<Tz>> {
    let mut out: BTreeMap<String, Vec<Tz>> = file
        .keys()
        .map(|p| (p.to_string(), zones_under(file, p)))
        .collect();
    for &(overlay, parent) in OVERLAYS {
        let (overlay, parent) = (overlay.to_string(), parent.to_string());
        let inherited = zones_under(file, &parent);
        if inherited.is_empty() {
            continue; // checked by `every_overlay_parent_is_in_the_data_...`
        }
        out.entry(overlay.clone()).or_default();
        for (p, z) in out.range_mut(overlay.clone()..) {
            if !p.starts_with(&overlay) {
                break;
            }
            if p.len() < 6 {
                add_zones(z, &inherited);
            }
        }
    }
    for z in out.values_mut() {
        z.sort_by_key(|z| z.name());
    }
    out
}

impl Tables {
    fn parse() -> Tables {
        let mut file: BTreeMap<&str, Vec<Tz>> = BTreeMap::new();
        let mut country: Option<Vec<Tz>> = None;
        for r in rows(PREFIX_ZONES_TSV) {
            let (Some(prefix), Some(zones)) = (r.first(), r.get(1)) else {
                continue;
            };
            let Some(rest) = prefix.strip_prefix('1') else {
                continue;
            };
            let zones: Vec<Tz> = zones.split(',').map(tz).collect();
            if rest.is_empty() {
                country = Some(zones);
            } else {
                file.insert(rest, zones);
            }
        }
        let widened = widened_prefix_rows(&file);
        let country = country.map(|z| (String::new(), z));
        let mut prefixes = HashMap::new();
        let mut sets: Vec<Vec<Tz>> = Vec::new();
        for (rest, zones) in country.into_iter().chain(widened) {
            let id = match sets.iter().position(|s| *s == zones) {
                Some(i) => i,
                None => {
                    sets.push(zones);
                    sets.len() - 1
                }
            };
            let value = if rest.is_empty() {
                0
            } else {
                rest.parse().unwrap_or(0)
            };
            prefixes.insert((rest.len() as u8, value), id as u16);
        }
        let mut area_codes = HashMap::new();
        for r in rows(AREA_CODES_TSV) {
            let Some(Ok(npa)) = r.first().map(|s| s.parse::<u16>()) else {
                continue;
            };
            let region = r.get(1).copied().unwrap_or("").to_owned();
            let states: Vec<String> = r
                .get(2)
                .map(|s| {
                    s.split(',')
                        .filter(|x| !x.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            area_codes.insert(npa, (region, states));
        }
        // An overlay has its parent's region, and at least its parent's states.
        for &(overlay, parent) in OVERLAYS {
            let Some((p_region, p_states)) = area_codes.get(&parent).cloned() else {
                continue;
            };
            let (region, states) = area_codes.entry(overlay).or_default();
            if region.is_empty() {
                *region = p_region;
            }
            for s in p_states {
                if !states.contains(&s) {
                    states.push(s);
                }
            }
        }
        let mut states = HashMap::new();
        for r in rows(STATE_ZONES_TSV) {
            if r.len() < 4 {
                continue;
            }
            states.insert(
                r[0].to_owned(),
                StateZones {
                    country: r[1].to_owned(),
                    split: r[2] == "1",
                    zones: r[3].split(',').map(tz).collect(),
                },
            );
        }
        let mut zip3 = HashMap::new();
        for r in rows(ZIP3_TSV) {
            let (Some(Ok(z)), Some(st)) = (r.first().map(|s| s.parse::<u16>()), r.get(1)) else {
                continue;
            };
            zip3.insert(z, st.split(',').map(str::to_owned).collect());
        }
        let mut us_all = Vec::new();
        let mut ca_all = Vec::new();
        let mut codes: Vec<&String> = states.keys().collect();
        codes.sort();
        for code in codes {
            let s = &states[code];
            let target = match (s.country.as_str(), code.as_str()) {
                ("US", "GU" | "AS" | "MP") => continue,
                ("US", _) => &mut us_all,
                _ => &mut ca_all,
            };
            for z in &s.zones {
                if !target.contains(z) {
                    target.push(*z);
                }
            }
        }
        Tables {
            prefixes,
            sets,
            area_codes,
            states,
            zip3,
            us_all,
            ca_all,
        }
    }

    /// Longest-prefix lookup of a +1 number's national digits (10 digits).
    pub fn prefix_zones(&self, national: &str) -> PrefixZones<'_> {
        for len in (1..=national.len().min(9)).rev() {
            let Ok(v) = national[..len].parse::<u32>() else {
                continue;
            };
            if let Some(&id) = self.prefixes.get(&(len as u8, v)) {
                return PrefixZones::Geographic(
                    format!("1{}", &national[..len]),
                    &self.sets[id as usize],
                );
            }
        }
        PrefixZones::NonGeographic
    }

    /// The zones of the whole-country row (`1`), as the data file gives them.
    pub fn country_row(&self) -> &[Tz] {
        self.prefixes
            .get(&(0, 0))
            .map(|&id| self.sets[id as usize].as_slice())
            .unwrap_or(&[])
    }

    /// The area code an overlay area code overlays (`OVERLAYS`), if it is one.
    pub fn overlay_parent(&self, npa: u16) -> Option<u16> {
        OVERLAYS
            .iter()
            .find(|&&(overlay, _)| overlay == npa)
            .map(|&(_, parent)| parent)
    }

    /// ISO region of an area code (`US`, `CA`, `PR`, `JM`, ...).
    pub fn area_code_region(&self, npa: u16) -> Option<&str> {
        self.area_codes
            .get(&npa)
            .map(|(r, _)| r.as_str())
            .filter(|r| !r.is_empty())
    }

    /// States or provinces of an area code (usually one).
    pub fn area_code_states(&self, npa: u16) -> &[String] {
        self.area_codes
            .get(&npa)
            .map(|(_, s)| s.as_slice())
            .unwrap_or(&[])
    }

    pub fn state(&self, code: &str) -> Option<&StateZones> {
        self.states.get(code)
    }

    /// State(s) of a postal code: US ZIP (5 digits or ZIP+4) by its ZIP3, Canadian
    /// postal code by its first letter (Canada Post's forward sortation areas).
    pub fn postal_states(&self, postal: &str) -> Vec<String> {
        let p = postal.trim();
        let first = p.chars().next().map(|c| c.to_ascii_uppercase());
        if let Some(letter) = first.filter(char::is_ascii_alphabetic) {
            let province = match letter {
                'A' => "NL",
                'B' => "NS",
                'C' => "PE",
                'E' => "NB",
                'G' | 'H' | 'J' => "QC",
                'K' | 'L' | 'M' | 'N' | 'P' => "ON",
                'R' => "MB",
                'S' => "SK",
                'T' => "AB",
                'V' => "BC",
                'Y' => "YT",
                // X covers both the Northwest Territories and Nunavut.
                'X' => return vec!["NT".into(), "NU".into()],
                _ => return Vec::new(),
            };
            return vec![province.into()];
        }
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        if digits.len() != 5 && digits.len() != 9 {
            return Vec::new();
        }
        digits[..3]
            .parse::<u16>()
            .ok()
            .and_then(|z| self.zip3.get(&z))
            .cloned()
            .unwrap_or_default()
    }

    /// All zones of the 50 states, DC, Puerto Rico and the US Virgin Islands.
    pub fn us_all(&self) -> &[Tz] {
        &self.us_all
    }

    /// All zones of Canada's provinces and territories.
    pub fn ca_all(&self) -> &[Tz] {
        &self.ca_all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_zone_name_in_the_data_is_known() {
        let t = &*TABLES;
        assert!(t.sets.len() > 10);
        assert!(!t.us_all().is_empty() && !t.ca_all().is_empty());
    }

    #[test]
    fn the_prefix_table_has_about_two_thousand_nanp_rows() {
        let n = rows(PREFIX_ZONES_TSV).count();
        assert!((1900..2200).contains(&n), "{n}");
    }

    #[test]
    fn longest_prefix_lookup_gives_every_row_the_zones_of_the_rows_under_it() {
        // Zones only widen: a row answers for every number under it that no longer row
        // matches, so it carries its own zones and those of every longer row under it;
        // an overlay's rows shorter than a whole exchange also carry its parent's.
        // Computed here by brute force over the file, independently of `Tables::parse`.
        let t = &*TABLES;
        let file: Vec<(&str, Vec<Tz>)> = rows(PREFIX_ZONES_TSV)
            .map(|r| (&r[0][1..], r[1].split(',').map(tz).collect()))
            .collect();
        let under = |p: &str, into: &mut Vec<Tz>| {
            for (q, z) in &file {
                if q.starts_with(p) {
                    for z in z {
                        if !into.contains(z) {
                            into.push(*z);
                        }
                    }
                }
            }
        };
        let mut checked = 0;
        for r in rows(PREFIX_ZONES_TSV) {
            let prefix = r[0];
            let rest = &prefix[1..];
            if rest.is_empty() {
                let want: Vec<Tz> = r[1].split(',').map(tz).collect();
                assert_eq!(t.country_row(), want.as_slice());
                continue;
            }
            let mut want = Vec::new();
            under(rest, &mut want);
            let overlay = rest.get(..3).and_then(|n| n.parse::<u16>().ok());
            if let Some(&(_, parent)) = OVERLAYS.iter().find(|&&(o, _)| Some(o) == overlay) {
                if rest.len() < 6 {
                    under(&parent.to_string(), &mut want);
                }
            }
            want.sort_by_key(|z| z.name());
            // Pad the prefix to a full number with digits that no longer row extends:
            // try each padding digit until the lookup stops at this very row.
            let mut found = false;
            for pad in ['0', '1', '9', '5', '2'] {
                let national: String = rest
                    .chars()
                    .chain(std::iter::repeat(pad))
                    .take(10)
                    .collect();
                if let PrefixZones::Geographic(p, z) = t.prefix_zones(&national) {
                    if p == prefix {
                        assert_eq!(z, want.as_slice(), "{prefix}");
                        found = true;
                        break;
                    }
                }
            }
            assert!(found, "no padding reached row {prefix}");
            checked += 1;
        }
        assert!(checked > 1900);
    }

    /// The zones the lookup gives a national number, sorted by name (empty when only the
    /// whole-country row matched).
    fn zones_of(national: &str) -> Vec<&'static str> {
        let mut z: Vec<&str> = match TABLES.prefix_zones(national) {
            PrefixZones::Geographic(_, z) => z.iter().map(|z| z.name()).collect(),
            PrefixZones::NonGeographic => Vec::new(),
        };
        z.sort_unstable();
        z
    }

    #[test]
    fn a_split_area_code_resolves_to_the_exchange_zone() {
        // 850-432 is listed (Pensacola, Central): it keeps its own zone.
        assert_eq!(zones_of("8504321234"), ["America/Chicago"]);
        // 850-222 is not listed. This test used to expect New York alone (the file's
        // whole-850 row), but an unlisted 850 exchange may be anywhere 850 is, Central
        // included, so it must wait for both zones (47 CFR 64.1200(c)(1): every candidate
        // zone must allow the call).
        assert_eq!(
            zones_of("8502221234"),
            ["America/Chicago", "America/New_York"]
        );
    }

    #[test]
    fn an_unlisted_exchange_gets_every_zone_of_its_area_code() {
        // 850: Eastern and Central (the panhandle west of the Apalachicola).
        assert_eq!(
            zones_of("8502221234"),
            ["America/Chicago", "America/New_York"]
        );
        // 907-200 is unlisted: Alaska's every zone, the Aleutians' (907-581) included.
        assert_eq!(
            zones_of("9072001234"),
            [
                "America/Adak",
                "America/Anchorage",
                "America/Juneau",
                "Pacific/Honolulu"
            ]
        );
        // 270 (Kentucky), 541 (Oregon), 928 (Arizona, Navajo Nation on Denver time).
        assert_eq!(
            zones_of("2702001234"),
            ["America/Chicago", "America/New_York"]
        );
        assert_eq!(
            zones_of("5412001234"),
            ["America/Denver", "America/Los_Angeles"]
        );
        assert_eq!(
            zones_of("9282001234"),
            ["America/Denver", "America/Phoenix"]
        );
        // A row shorter than an exchange but longer than the area code widens too:
        // 208-2 (no 208 row in the file) covers 208-2xx exchanges in three zones.
        assert_eq!(
            zones_of("2082001234"),
            ["America/Boise", "America/Denver", "America/Los_Angeles"]
        );
    }

    #[test]
    fn a_listed_exchange_keeps_its_own_zones() {
        assert_eq!(zones_of("8504321234"), ["America/Chicago"]);
        assert_eq!(zones_of("9075811234"), ["Pacific/Honolulu"]);
        assert_eq!(zones_of("9072091234"), ["America/Juneau"]);
        assert_eq!(zones_of("2082011234"), ["America/Denver"]);
        assert_eq!(
            zones_of("2084321234"),
            ["America/Boise", "America/Los_Angeles"]
        );
        assert_eq!(zones_of("2702021234"), ["America/Chicago"]);
        assert_eq!(zones_of("5413721234"), ["America/Denver"]);
        assert_eq!(
            zones_of("9282831234"),
            ["America/Denver", "America/Phoenix"]
        );
        // A single-zone area code is unchanged.
        assert_eq!(zones_of("2122341234"), ["America/New_York"]);
    }

    #[test]
    fn an_overlay_gets_its_parents_zones() {
        let t = &*TABLES;
        // 448 overlays 850: the file gives it Eastern only.
        assert_eq!(
            zones_of("4482001234"),
            ["America/Chicago", "America/New_York"]
        );
        // 364 overlays 270, 930 overlays 812, 458 overlays 541.
        assert_eq!(
            zones_of("3642001234"),
            ["America/Chicago", "America/New_York"]
        );
        assert_eq!(
            zones_of("9302001234"),
            ["America/Chicago", "America/New_York"]
        );
        assert_eq!(
            zones_of("4582001234"),
            ["America/Denver", "America/Los_Angeles"]
        );
        // 689 overlays 407 (Orlando): the file says Central only; Eastern is added.
        assert_eq!(
            zones_of("6892001234"),
            ["America/Chicago", "America/New_York"]
        );
        // 986 overlays 208: the file lacks 208's Mountain exchanges.
        assert_eq!(
            zones_of("9862001234"),
            ["America/Boise", "America/Denver", "America/Los_Angeles"]
        );
        // 729 overlays 423 and is not in the file at all: it gets 423's zones, region
        // and state instead of being taken for a non-geographic number.
        assert_eq!(
            zones_of("7292001234"),
            ["America/Chicago", "America/New_York"]
        );
        assert_eq!(t.area_code_region(729), Some("US"));
        assert_eq!(t.area_code_states(729), ["TN".to_string()]);
        // 457 overlays 318 (Louisiana): its state's rules apply by area code.
        assert_eq!(zones_of("4572001234"), ["America/Chicago"]);
        assert_eq!(t.area_code_states(457), ["LA".to_string()]);
        // 474 overlays 306 (Saskatchewan, no daylight time): Regina is added.
        assert_eq!(
            zones_of("4742001234"),
            ["America/Regina", "America/Winnipeg"]
        );
        assert_eq!(t.overlay_parent(448), Some(850));
        assert_eq!(t.overlay_parent(212), None);
    }

    #[test]
    fn every_overlay_parent_is_in_the_data_and_no_overlay_is_overlaid() {
        let t = &*TABLES;
        for &(overlay, parent) in OVERLAYS {
            assert!(
                t.area_code_region(parent).is_some(),
                "{overlay}: parent {parent} has no region"
            );
            assert!(
                matches!(
                    t.prefix_zones(&format!("{parent}2001234")),
                    PrefixZones::Geographic(..)
                ),
                "{overlay}: parent {parent} has no prefix row"
            );
            assert!(
                OVERLAYS.iter().all(|&(o, _)| o != parent),
                "{parent} is both a parent and an overlay"
            );
            assert_eq!(
                OVERLAYS.iter().filter(|&&(o, _)| o == overlay).count(),
                1,
                "{overlay} listed twice"
            );
            // An overlay's states include its parent's.
            for s in t.area_code_states(parent) {
                assert!(t.area_code_states(overlay).contains(s), "{overlay}: {s}");
            }
        }
    }

    #[test]
    fn toll_free_numbers_are_non_geographic() {
        assert_eq!(
            TABLES.prefix_zones("8002345678"),
            PrefixZones::NonGeographic
        );
    }

    #[test]
    fn the_us_non_geographic_set_excludes_guam_and_the_pacific_territories() {
        let all = TABLES.us_all();
        assert!(all.contains(&Tz::Pacific__Honolulu));
        assert!(all.contains(&Tz::America__Puerto_Rico));
        assert!(all.contains(&Tz::America__St_Thomas));
        assert!(all.contains(&Tz::America__Adak));
        assert!(!all.contains(&Tz::Pacific__Guam));
        assert!(!all.contains(&Tz::Pacific__Pago_Pago));
        assert!(!all.contains(&Tz::Pacific__Saipan));
    }

    #[test]
    fn postal_codes_map_to_states_and_provinces() {
        let t = &*TABLES;
        assert_eq!(t.postal_states("32501"), vec!["FL".to_string()]);
        assert_eq!(t.postal_states("10001-1234"), vec!["NY".to_string()]);
        assert_eq!(t.postal_states("M5V 3L9"), vec!["ON".to_string()]);
        assert_eq!(t.postal_states("h2x1y4"), vec!["QC".to_string()]);
        assert!(t.postal_states("??").is_empty());
    }

    #[test]
    fn area_codes_map_to_states_and_regions() {
        let t = &*TABLES;
        assert_eq!(t.area_code_states(850), ["FL".to_string()]);
        assert_eq!(t.area_code_region(416), Some("CA"));
        assert_eq!(t.area_code_states(416), ["ON".to_string()]);
        assert_eq!(t.area_code_region(787), Some("PR"));
        assert_eq!(t.area_code_region(876), Some("JM"));
        assert!(t.state("FL").is_some_and(|s| s.split));
        assert!(t.state("NY").is_some_and(|s| !s.split));
    }
}
