//! Writes `data/nanp_valid_blocks.txt`: the 7-digit NANP blocks (NPA-NXX-X) whose
//! numbers the `phonenumber` crate finds valid against `data/nanp_metadata.xml`, as
//! inclusive ranges. The worker and the importer look numbers up in this table
//! instead of running the crate's regular expressions (see `src/phone.rs`).
//!
//! `cargo run --release --example gen_nanp_blocks > data/nanp_valid_blocks.txt`
//! Re-run after `scripts/gen-nanp-metadata.py` (a `phonenumber` upgrade);
//! `phone::tests` fail while the table and the crate disagree.
use std::io::Write;

fn main() -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    writeln!(
        out,
        "# Valid NANP 7-digit blocks (NPA NXX X), inclusive ranges `first last`, from the"
    )?;
    writeln!(
        out,
        "# phonenumber crate's answer on data/nanp_metadata.xml; made by"
    )?;
    writeln!(
        out,
        "# `cargo run --release --example gen_nanp_blocks`. Do not edit by hand."
    )?;
    let mut start: Option<u32> = None;
    for block in dialer::phone::FIRST_BLOCK..=dialer::phone::LAST_BLOCK {
        let valid = dialer::phone::crate_block_is_valid(block);
        match (valid, start) {
            (true, None) => start = Some(block),
            (false, Some(s)) => {
                writeln!(out, "{s} {}", block - 1)?;
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        writeln!(out, "{s} {}", dialer::phone::LAST_BLOCK)?;
    }
    out.flush()
}
