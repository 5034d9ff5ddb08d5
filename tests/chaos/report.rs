//! What the chaos suite found, per fault: rounds, acknowledged messages, lost, duplicated, other
//! violations, time to recover (p50/max) and time until the cluster was whole again; printed as a
//! Markdown table (the one RELIABILITY.md records).

use std::{fmt::Write as _, time::Duration};

/// One round's outcome.
#[derive(Clone, Debug, Default)]
pub struct RoundResult {
    /// Messages acknowledged during the round.
    pub acknowledged: u64,
    /// Acknowledged messages found lost in the round's check (new ones only).
    pub lost: u64,
    /// Messages found stored twice in the round's check (new ones only).
    pub duplicated: u64,
    /// Every other broken invariant (leadership, order, divergence, recovery bound).
    pub violations: Vec<String>,
    /// Time to recover: the longest time without any acknowledgement from the fault's start
    /// until the cluster was whole again (what the producers saw of the fault).
    pub recovered: Option<Duration>,
    /// From the heal (the start, for an instantaneous fault) to the first acknowledgement of
    /// every producer after it.
    pub after_heal: Option<Duration>,
    /// From the heal until one leader and every node in sync again.
    pub whole: Option<Duration>,
}

/// The row of the check after the last round (producers drained, logs converged).
const FINAL: &str = "(final check)";

/// Results by fault name, in the order faults ran.
#[derive(Debug, Default)]
pub struct Report {
    /// `(fault, its rounds)`, in run order.
    faults: Vec<(String, Vec<RoundResult>)>,
}

impl Report {
    /// Adds a round of `fault`.
    pub fn add(&mut self, fault: &str, round: RoundResult) {
        match self.faults.iter_mut().find(|(f, _)| f == fault) {
            Some((_, rounds)) => rounds.push(round),
            None => self.faults.push((fault.to_string(), vec![round])),
        }
    }

    /// Adds the check after the last round (its own row, not counted as a round).
    pub fn add_final(&mut self, check: RoundResult) {
        self.add(FINAL, check);
    }

    /// Every violation, `fault round: what`, plus every loss and duplicate.
    pub fn violations(&self) -> Vec<String> {
        let mut all = Vec::new();
        for (fault, rounds) in &self.faults {
            for (i, r) in rounds.iter().enumerate() {
                if r.lost > 0 {
                    all.push(format!(
                        "{fault} round {}: {} acknowledged messages lost",
                        i + 1,
                        r.lost
                    ));
                }
                if r.duplicated > 0 {
                    all.push(format!(
                        "{fault} round {}: {} messages duplicated",
                        i + 1,
                        r.duplicated
                    ));
                }
                all.extend(
                    r.violations
                        .iter()
                        .map(|v| format!("{fault} round {}: {v}", i + 1)),
                );
            }
        }
        all
    }

    /// The Markdown table: one row per fault, and a total.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| fault | rounds | acknowledged | lost | duplicated | other violations | recover p50 | recover max | served after heal max | whole again max |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        let mut total = RoundResult::default();
        let mut total_rounds = 0;
        for (fault, rounds) in &self.faults {
            let sum = |f: fn(&RoundResult) -> u64| rounds.iter().map(f).sum::<u64>();
            let recovered: Vec<Duration> = rounds.iter().filter_map(|r| r.recovered).collect();
            let whole: Vec<Duration> = rounds.iter().filter_map(|r| r.whole).collect();
            let after_heal: Vec<Duration> = rounds.iter().filter_map(|r| r.after_heal).collect();
            let violations: usize = rounds.iter().map(|r| r.violations.len()).sum();
            let counted = if fault == FINAL { 0 } else { rounds.len() };
            let _ = writeln!(
                out,
                "| {fault} | {} | {} | {} | {} | {violations} | {} | {} | {} | {} |",
                if fault == FINAL {
                    "-".to_string()
                } else {
                    counted.to_string()
                },
                sum(|r| r.acknowledged),
                sum(|r| r.lost),
                sum(|r| r.duplicated),
                seconds(percentile(&recovered, 50)),
                seconds(recovered.iter().max().copied()),
                seconds(after_heal.iter().max().copied()),
                seconds(whole.iter().max().copied()),
            );
            total.acknowledged += sum(|r| r.acknowledged);
            total.lost += sum(|r| r.lost);
            total.duplicated += sum(|r| r.duplicated);
            total_rounds += counted;
            total
                .violations
                .extend(rounds.iter().flat_map(|r| r.violations.clone()));
        }
        let _ = writeln!(
            out,
            "| **total** | {total_rounds} | {} | {} | {} | {} | | | | |",
            total.acknowledged,
            total.lost,
            total.duplicated,
            total.violations.len()
        );
        out
    }
}

/// The `p`th percentile (nearest rank) of `values`.
pub fn percentile(values: &[Duration], p: usize) -> Option<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// `1.23 s`, or `-` for none.
fn seconds(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nearest-rank percentiles of a small sample.
    #[test]
    fn nearest_rank_percentiles() {
        let ms = |v: &[u64]| v.iter().map(|&m| Duration::from_millis(m)).collect::<Vec<_>>();
        assert_eq!(
            percentile(&ms(&[30, 10, 20]), 50),
            Some(Duration::from_millis(20))
        );
        assert_eq!(
            percentile(&ms(&[10, 20, 30, 40]), 50),
            Some(Duration::from_millis(20))
        );
        assert_eq!(
            percentile(&ms(&[10, 20, 30, 40]), 100),
            Some(Duration::from_millis(40))
        );
        assert_eq!(percentile(&[], 50), None);
    }

    /// The table has a row per fault in run order with sums and recovery figures, the final
    /// check (not a round) and a total; losses and duplicates are violations too.
    #[test]
    fn table_rows_and_violations() {
        let mut report = Report::default();
        let round = |ack, lost, rec| RoundResult {
            acknowledged: ack,
            lost,
            recovered: Some(Duration::from_millis(rec)),
            after_heal: Some(Duration::from_millis(rec / 10)),
            whole: Some(Duration::from_millis(rec * 2)),
            ..RoundResult::default()
        };
        report.add("kill-leader", round(100, 0, 1500));
        report.add("kill-leader", round(50, 0, 2500));
        report.add("slow-sync", round(10, 1, 0));
        report.add_final(RoundResult {
            acknowledged: 5,
            ..RoundResult::default()
        });
        let table = report.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[2],
            "| kill-leader | 2 | 150 | 0 | 0 | 0 | 1.50 s | 2.50 s | 0.25 s | 5.00 s |"
        );
        assert!(lines[3].starts_with("| slow-sync | 1 | 10 | 1 | 0 |"), "{table}");
        assert_eq!(lines[4], "| (final check) | - | 5 | 0 | 0 | 0 | - | - | - | - |");
        assert_eq!(lines[5], "| **total** | 3 | 165 | 1 | 0 | 0 | | | | |");
        assert_eq!(
            report.violations(),
            ["slow-sync round 1: 1 acknowledged messages lost"]
        );
    }
}
