//! The operator's documentation checked against the code, so that neither can change alone:
//! README.md's options table against clap's arguments (every long option, its value's name, its
//! default and the ranges clap enforces), and docs/stats.md's counter lists against the
//! `counters!` and `drop_reasons!` lists of `stats`. PURE: the documents are compiled in.

use super::{Args, parse_size};
use crate::stats::{Counters, DropReason, Listed, PathStats};
use clap::{Arg, CommandFactory, Parser};
use std::collections::{BTreeMap, BTreeSet};

const README: &str = include_str!("../../README.md");
const STATS_DOC: &str = include_str!("../../docs/stats.md");

/// The cells of a Markdown table row, trimmed, with `\|` (a pipe inside a cell) unescaped.
fn cells(line: &str) -> Vec<String> {
    let mut cells = vec![String::new()];
    let mut chars = line.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cells.last_mut().unwrap().push('|');
                chars.next();
            }
            '|' => cells.push(String::new()),
            c => cells.last_mut().unwrap().push(c),
        }
    }
    // A row starts and ends with a pipe: drop the empty outsides.
    let cells: Vec<String> = cells.iter().map(|c| c.trim().to_string()).collect();
    cells[1..cells.len() - 1].to_vec()
}

/// The rows of the first table after the heading `heading` (a whole line), before any other
/// heading: each row's cells, the header and separator rows left out.
fn table_under(document: &str, heading: &str) -> Vec<Vec<String>> {
    let mut lines = document.lines().skip_while(|l| l.trim_end() != heading);
    assert!(lines.next().is_some(), "no heading '{heading}'");
    let is_row = |l: &&str| l.trim_start().starts_with('|');
    let mut rows: Vec<Vec<String>> = lines
        .take_while(|l| !l.starts_with('#'))
        .skip_while(|l| !is_row(l))
        .take_while(is_row)
        .map(cells)
        .collect();
    assert!(rows.len() > 2, "no table under '{heading}'");
    assert!(
        rows[1]
            .iter()
            .all(|c| c.chars().all(|c| c == '-' || c == ':')),
        "'{heading}': the table's second row is not its separator"
    );
    rows.drain(..2);
    rows
}

/// The spans in backquotes of a cell.
fn code_spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// One row of the options table: the option as the table spells it.
struct OptionRow {
    /// The long name, without `--`.
    long: String,
    /// What follows the name in the first cell's code span (`N`, `auto|uring|...`), if anything.
    value_name: Option<String>,
    default: String,
    values: String,
}

fn options_table() -> Vec<OptionRow> {
    table_under(README, "## Options")
        .into_iter()
        .map(|row| {
            assert_eq!(row.len(), 4, "options table row {row:?}: want 4 cells");
            let spans = code_spans(&row[0]);
            let syntax = spans.first().unwrap_or_else(|| {
                panic!("options table row {row:?}: no `--option` in its first cell")
            });
            let syntax = syntax
                .strip_prefix("--")
                .unwrap_or_else(|| panic!("options table row {row:?}: '{syntax}' is not --option"));
            let (long, value_name) = match syntax.split_once(' ') {
                Some((long, value)) => (long.to_string(), Some(value.to_string())),
                None => (syntax.to_string(), None),
            };
            OptionRow {
                long,
                value_name,
                default: row[1].clone(),
                values: row[2].clone(),
            }
        })
        .collect()
}

/// clap's long options, by name, without the `--help` and `--version` clap adds itself.
fn clap_options() -> BTreeMap<String, Arg> {
    Args::command()
        .get_arguments()
        .filter_map(|arg| Some((arg.get_long()?.to_string(), arg.clone())))
        .filter(|(long, _)| long != "help" && long != "version")
        .collect()
}

/// Whether clap takes `--long value` (with a valid `--peer`, unless that is the option tried).
fn clap_accepts(long: &str, value: &str) -> bool {
    let option = format!("--{long}={value}");
    let mut argv = vec!["tunfwd", option.as_str()];
    if long != "peer" {
        argv.extend(["--peer", "198.18.0.2:1"]);
    }
    Args::try_parse_from(argv).is_ok()
}

/// A range bound as the table writes it: a number, or a size with K, M or G.
fn bound(text: &str) -> u64 {
    parse_size(text).unwrap_or_else(|| panic!("'{text}' is not a number or a size")) as u64
}

/// Every long option of `Args` has a row in README.md's options table and every row is an
/// option, each once; the value's name is clap's; a clap default is the table's; a flag's
/// default is "off", the required option's "required"; and every range written `lo..=hi` in the
/// values cell is the one clap enforces: both ends accepted, one past either end refused. An
/// option with a numeric default and no range in the table must take 0 and 2^32 - 1 (or the
/// table hides a range clap enforces), and a value name listing choices lists clap's.
#[test]
fn options_table_matches_clap() {
    let rows = options_table();
    let options = clap_options();

    let mut seen = BTreeSet::new();
    for row in &rows {
        assert!(
            seen.insert(row.long.clone()),
            "README.md's options table lists --{} twice",
            row.long
        );
    }
    let documented: BTreeSet<&String> = rows.iter().map(|r| &r.long).collect();
    let missing: Vec<_> = options.keys().filter(|k| !documented.contains(k)).collect();
    let unknown: Vec<_> = documented
        .iter()
        .filter(|k| !options.contains_key(**k))
        .collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "README.md's options table and clap disagree: options clap has and the table lacks: \
         {missing:?}; rows for options clap does not have: {unknown:?}"
    );

    for row in &rows {
        let arg = &options[&row.long];
        let long = &row.long;
        let takes_value = arg.get_action().takes_values();
        let clap_value_name = arg.get_value_names().map(|names| {
            names
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        });
        if takes_value {
            assert_eq!(
                row.value_name,
                clap_value_name,
                "--{long}: the table names its value differently from clap (`--{long} <{}>`)",
                clap_value_name.as_deref().unwrap_or("?")
            );
        } else {
            assert_eq!(
                row.value_name, None,
                "--{long} is a flag and takes no value"
            );
            assert!(
                row.default.starts_with("off"),
                "--{long} is a flag: its default is 'off', not '{}'",
                row.default
            );
        }
        if arg.is_required_set() {
            assert_eq!(row.default, "required", "--{long} is required");
        }
        if takes_value {
            for default in arg.get_default_values() {
                let default = default.to_string_lossy();
                assert!(
                    code_spans(&row.default).contains(&default.as_ref()),
                    "--{long}: clap's default is {default}, the table's default cell says '{}' \
                     (write it as `{default}`)",
                    row.default
                );
            }
        }
        let choices: Vec<String> = arg
            .get_possible_values()
            .iter()
            .map(|v| v.get_name().to_string())
            .collect();
        if takes_value && !choices.is_empty() {
            assert_eq!(
                clap_value_name.as_deref(),
                Some(choices.join("|").as_str()),
                "--{long}: the value name must list clap's choices, in order"
            );
        }
        let states_range = code_spans(&row.values).iter().any(|s| s.contains("..="));
        let numeric = row
            .default
            .trim_matches('`')
            .split_whitespace()
            .next()
            .is_some_and(|d| d.parse::<u64>().is_ok());
        if numeric && !states_range {
            for value in ["0", "4294967295"] {
                assert!(
                    clap_accepts(long, value),
                    "--{long}: clap refuses {value}, so it enforces a range the table does not \
                     state (write it as `lo..=hi` in the values cell)"
                );
            }
        }
        for span in code_spans(&row.values) {
            let Some((lo, hi)) = span.split_once("..=") else {
                continue;
            };
            let (lo, hi) = (bound(lo), bound(hi));
            for (value, accepted) in [(lo, true), (hi, true), (hi + 1, false)]
                .into_iter()
                .chain(lo.checked_sub(1).map(|below| (below, false)))
            {
                assert_eq!(
                    clap_accepts(long, &value.to_string()),
                    accepted,
                    "--{long}: the table says `{span}`, but clap {} {value}",
                    if accepted { "refuses" } else { "accepts" }
                );
            }
        }
    }
}

/// The rows of a counter table: the name in the first cell's code span, and the second cell.
fn counter_rows(heading: &str) -> BTreeMap<String, String> {
    let mut rows = BTreeMap::new();
    for row in table_under(STATS_DOC, heading) {
        let name = code_spans(&row[0])
            .first()
            .unwrap_or_else(|| panic!("'{heading}': row {row:?} has no `name`"))
            .to_string();
        let meaning = row.get(1).cloned().unwrap_or_default();
        assert!(
            rows.insert(name.clone(), meaning).is_none(),
            "'{heading}' lists {name} twice"
        );
    }
    rows
}

/// The names a list documents and the code lacks, and the other way round, as a message that says
/// what to add where; empty when they agree.
fn disagreement(
    heading: &str,
    documented: &BTreeMap<String, String>,
    code: &[(&str, Option<&str>)],
) -> String {
    let mut problems = Vec::new();
    for (name, help) in code {
        match (documented.get(*name), help) {
            (None, _) => problems.push(format!(
                "add the row | `{name}` | {} | under '{heading}'",
                help.unwrap_or("...")
            )),
            (Some(meaning), Some(help)) if meaning != help => problems.push(format!(
                "`{name}`'s meaning under '{heading}' is not its help in stats.rs: write \"{help}\""
            )),
            _ => {}
        }
    }
    for name in documented.keys() {
        if !code.iter().any(|(n, _)| n == name) {
            problems.push(format!(
                "'{heading}' lists `{name}`, which stats.rs does not have"
            ));
        }
    }
    problems.join("\n")
}

/// docs/stats.md lists every counter of `Counters` and `PathStats`, with its help (what the
/// metrics print as `# HELP`), and every drop reason, and nothing else.
#[test]
fn counter_lists_match_the_code() {
    let with_help = |names: &'static [&'static str], help: &'static [&'static str]| {
        names
            .iter()
            .zip(help)
            .map(|(n, h)| (*n, Some(*h)))
            .collect::<Vec<_>>()
    };
    let reasons: Vec<(&str, Option<&str>)> =
        DropReason::ALL.iter().map(|r| (r.name(), None)).collect();
    let problems: Vec<String> = [
        ("### Per queue", with_help(Counters::NAMES, Counters::HELP)),
        ("### Path", with_help(PathStats::NAMES, PathStats::HELP)),
        ("### Drops", reasons),
    ]
    .iter()
    .map(|(heading, code)| disagreement(heading, &counter_rows(heading), code))
    .filter(|p| !p.is_empty())
    .collect();
    assert!(
        problems.is_empty(),
        "docs/stats.md and src/stats.rs disagree:\n{}",
        problems.join("\n")
    );
}

#[test]
fn table_rows_split_on_unescaped_pipes() {
    assert_eq!(
        cells("| `--tos N\\|inherit` | 0 | a, b |  x |"),
        ["`--tos N|inherit`", "0", "a, b", "x"]
    );
    let doc = "# T\n## A\ntext\n\n| a | b |\n|---|---|\n| `x` | 1 |\n| `y` | 2 |\n\n| c |\n|---|\n\
               | `w` |\n## B\n| b |\n|---|\n| `z` |\n";
    assert_eq!(
        table_under(doc, "## A"),
        [vec!["`x`", "1"], vec!["`y`", "2"]]
    );
    assert_eq!(table_under(doc, "## B"), [vec!["`z`"]]);
}
