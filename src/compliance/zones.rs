//! Time-zone and geography data: NANP prefix -> zones (libphonenumber, Apache-2.0),
//! NPA -> region and state, state/province -> zones, US ZIP3 -> state, Canadian
//! postal-code letter -> province. All embedded with `include_str!` and parsed once.

use chrono_tz::Tz;
use std::collections::HashMap;
use std::sync::LazyLock;

pub const PREFIX_ZONES_TSV: &str = include_str!("../../data/nanp_prefix_zones.tsv");
pub const AREA_CODES_TSV: &str = include_str!("../../data/nanp_area_codes.tsv");
pub const STATE_ZONES_TSV: &str = include_str!("../../data/state_zones.tsv");
pub const ZIP3_TSV: &str = include_str!("../../data/us_zip3_states.tsv");

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

impl Tables {
    fn parse() -> Tables {
        let mut prefixes = HashMap::new();
        let mut sets: Vec<Vec<Tz>> = Vec::new();
        for r in rows(PREFIX_ZONES_TSV) {
            let (Some(prefix), Some(zones)) = (r.first(), r.get(1)) else {
                continue;
            };
            let Some(rest) = prefix.strip_prefix('1') else {
                continue;
            };
            let zones: Vec<Tz> = zones.split(',').map(tz).collect();
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
            let states = r
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
    fn longest_prefix_lookup_gives_the_file_zones_for_every_prefix_in_it() {
        let t = &*TABLES;
        let mut checked = 0;
        for r in rows(PREFIX_ZONES_TSV) {
            let prefix = r[0];
            let want: Vec<Tz> = r[1].split(',').map(tz).collect();
            let rest = &prefix[1..];
            if rest.is_empty() {
                assert_eq!(t.country_row(), want.as_slice());
                continue;
            }
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

    #[test]
    fn a_split_area_code_resolves_to_the_exchange_zone() {
        let t = &*TABLES;
        let chicago: &[Tz] = &[Tz::America__Chicago];
        let ny: &[Tz] = &[Tz::America__New_York];
        assert!(
            matches!(t.prefix_zones("8504321234"), PrefixZones::Geographic(_, z) if z == chicago)
        );
        assert!(matches!(t.prefix_zones("8502221234"), PrefixZones::Geographic(_, z) if z == ny));
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
