//! `fraudctl drift show`: what the drift job's reports on `drift-reports` say — for the latest
//! windows of each model version, every feature's PSI against the training reference, and for a
//! feature that drifted, where its distribution moved (the bins of its `DriftReport`: the share
//! of decisions the training data had in each, and the window's). Read outside any consumer group.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use schemas::{DriftReport, DriftSeverity};
use scorer::card::ModelCard;
use scorer::replay::{Reader, ReplayError, show_time};

/// Which reports a command takes.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Written at or after this (ms since the epoch); `None`: from the first record kept.
    pub from_ms: Option<i64>,
    /// Written before this.
    pub to_ms: i64,
    pub model_version: Option<String>,
    pub feature: Option<String>,
    /// The latest this many windows of each model version.
    pub windows: usize,
}

/// What a read found: the selected reports, grouped by model version, then window (oldest first),
/// and how many records could not be read as reports.
#[derive(Debug, Default)]
pub struct Found {
    pub windows: BTreeMap<String, BTreeMap<(i64, i64), Vec<DriftReport>>>,
    pub undecodable: u64,
}

/// One window of one model version as `drift show` prints it.
pub struct Window<'a> {
    pub model: &'a str,
    /// Start and end, ms since the epoch.
    pub span: (i64, i64),
    /// Largest PSI first.
    pub reports: Vec<&'a DriftReport>,
    /// The features a whole window of this model version has: as many as its model card monitors
    /// when the card is known, and at least as many as any window of it read has. The drift job
    /// writes a window's reports one after the other, so a window read while they are written
    /// has fewer.
    pub features: usize,
}

impl Found {
    /// The latest `windows` windows of each model version, oldest first. `monitored` gives, per
    /// model version whose card is known, how many of the selected features its drift job reports
    /// ([`monitored`]).
    pub fn latest(&self, windows: usize, monitored: &BTreeMap<String, usize>) -> Vec<Window<'_>> {
        let mut out = Vec::new();
        for (model, by_window) in &self.windows {
            let read = by_window.values().map(Vec::len).max().unwrap_or(0);
            let features = monitored.get(model).map_or(read, |&m| m.max(read));
            for (span, reports) in by_window.iter().rev().take(windows).rev() {
                let mut reports: Vec<&DriftReport> = reports.iter().collect();
                reports.sort_by(|a, b| b.psi.total_cmp(&a.psi).then_with(|| a.feature.cmp(&b.feature)));
                out.push(Window { model: model.as_str(), span: *span, reports, features });
            }
        }
        out
    }
}

/// For each model card, how many features the drift job reports per window for it (those of
/// its PSI reference), counting only `feature` when one is selected.
pub fn monitored<'a>(cards: impl IntoIterator<Item = &'a ModelCard>, feature: Option<&str>) -> BTreeMap<String, usize> {
    cards
        .into_iter()
        .map(|card| {
            let reference = &card.psi.reference;
            let count = feature.map_or(reference.len(), |f| usize::from(reference.contains_key(f)));
            (card.model_version.clone(), count)
        })
        .collect()
}

/// Reads the reports of `topic` the selection takes.
pub fn read(reader: &Reader, topic: &str, selection: &Selection) -> Result<Found, ReplayError> {
    let mut found = Found::default();
    crate::kafka::read_written(reader, topic, selection.from_ms, selection.to_ms, |msg| {
        let Ok(report) = schemas::decode::<DriftReport>(rdkafka::Message::payload(msg).unwrap_or_default()) else {
            found.undecodable += 1;
            return ControlFlow::Continue(());
        };
        let wanted = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        if wanted(&selection.model_version, &report.model_version) && wanted(&selection.feature, &report.feature) {
            let window = found.windows.entry(report.model_version.clone()).or_default().entry((report.window_start, report.window_end)).or_default();
            // A window reported twice (a drift job restarted within it) counts once: the latest.
            window.retain(|r| r.feature != report.feature);
            window.push(report);
        }
        ControlFlow::Continue(())
    })?;
    Ok(found)
}

/// One window for a person: a line for the window (saying so when it has fewer features than a
/// whole window of its model, [`Window::features`]), one per feature, and the bins of each feature that drifted
/// (every feature's when `all_bins`).
pub fn describe(window: &Window<'_>, all_bins: bool) -> String {
    let (model, (start, end), reports) = (window.model, window.span, &window.reports);
    let samples = reports.first().map_or(0, |r| r.samples);
    let mut out = format!("model {model}, window {} to {}, {samples} decisions", show_time(start), show_time(end));
    if reports.len() < window.features {
        out += &format!(", {} of {} features reported (the drift job may still be writing this window)", reports.len(), window.features);
    }
    out.push('\n');
    let width = reports.iter().map(|r| r.feature.len()).max().unwrap_or(0);
    for r in reports {
        out += &format!("  {:<width$}  PSI {:>7.3}  {}\n", r.feature, r.psi, r.severity.as_str());
    }
    for r in reports.iter().filter(|r| all_bins || r.severity != DriftSeverity::None) {
        out += &format!("  {} by bin: training share, this window's share (change), decisions\n", r.feature);
        let width = r.bins.iter().map(|b| b.label.len()).max().unwrap_or(0);
        for b in &r.bins {
            let (expected, actual) = (b.expected * 100.0, b.actual * 100.0);
            out += &format!("    {:<width$}  {expected:>5.1} %  {actual:>5.1} %  ({:>+6.1} pts)  {}\n", b.label, actual - expected, b.count);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::DriftBin;

    fn report(feature: &str, psi: f64, bins: &[(&str, f64, f64, i64)]) -> DriftReport {
        DriftReport {
            model_version: "1.0.0".into(),
            feature: feature.into(),
            window_start: 1_764_151_200_000,
            window_end: 1_764_151_260_000,
            samples: 1200,
            psi,
            severity: DriftSeverity::of(psi),
            bins: bins.iter().map(|&(label, expected, actual, count)| DriftBin { label: label.into(), expected, actual, count }).collect(),
        }
    }

    fn window(reports: Vec<&DriftReport>, features: usize) -> Window<'_> {
        Window { model: "1.0.0", span: (reports[0].window_start, reports[0].window_end), reports, features }
    }

    #[test]
    fn a_window_lists_every_feature_and_the_bins_of_those_that_drifted() {
        let amount = report("amount_log", 0.42, &[("(-inf, 3.2]", 0.5, 0.1, 120), ("(3.2, +inf)", 0.5, 0.9, 1080)]);
        let night = report("is_night", 0.01, &[("(-inf, 0.5]", 0.7, 0.69, 828), ("(0.5, +inf)", 0.3, 0.31, 372)]);
        let text = describe(&window(vec![&amount, &night], 2), false);
        assert_eq!(
            text,
            "model 1.0.0, window 2025-11-26T10:00:00Z to 2025-11-26T10:01:00Z, 1200 decisions\n\
             \x20 amount_log  PSI   0.420  significant\n\
             \x20 is_night    PSI   0.010  none\n\
             \x20 amount_log by bin: training share, this window's share (change), decisions\n\
             \x20   (-inf, 3.2]   50.0 %   10.0 %  ( -40.0 pts)  120\n\
             \x20   (3.2, +inf)   50.0 %   90.0 %  ( +40.0 pts)  1080\n"
        );
        let alone = describe(&window(vec![&night], 1), true);
        assert!(alone.contains("is_night by bin"), "{alone}");
        assert!(!alone.contains("features reported"), "{alone}");
        // Read while the drift job was still writing it: fewer features than the model's other windows.
        let partial = describe(&window(vec![&night], 2), false);
        assert!(
            partial.starts_with("model 1.0.0, window 2025-11-26T10:00:00Z to 2025-11-26T10:01:00Z, 1200 decisions, 1 of 2 features reported (the drift job may still be writing this window)\n"),
            "{partial}"
        );
    }

    #[test]
    fn the_latest_windows_of_each_model_come_largest_psi_first() {
        let mut found = Found::default();
        for (start, psi) in [(0, 0.3), (60, 0.05), (120, 0.2)] {
            let mut a = report("a", psi, &[]);
            let mut b = report("b", 0.15, &[]);
            for r in [&mut a, &mut b] {
                (r.window_start, r.window_end) = (start, start + 60);
            }
            found.windows.entry("1.0.0".into()).or_default().insert((start, start + 60), vec![a, b]);
        }
        // The newest window is being written: only one of its two reports is in yet.
        found.windows.entry("1.0.0".into()).or_default().insert((180, 240), vec![report("b", 0.15, &[])]);
        let latest = found.latest(3, &BTreeMap::new());
        let shown: Vec<(i64, Vec<&str>, usize)> =
            latest.iter().map(|w| (w.span.0, w.reports.iter().map(|r| r.feature.as_str()).collect(), w.features)).collect();
        assert_eq!(shown, [(60, vec!["b", "a"], 2), (120, vec!["a", "b"], 2), (180, vec!["b"], 2)]);
    }

    #[test]
    fn a_window_read_alone_is_complete_only_with_every_feature_its_card_monitors() {
        let mut found = Found::default();
        found.windows.entry("1.0.0".into()).or_default().insert((0, 60), vec![report("a", 0.2, &[]), report("b", 0.1, &[])]);
        found.windows.entry("2.0.0".into()).or_default().insert((0, 60), vec![report("a", 0.2, &[])]);
        // Card 1.0.0 monitors three features, of which two are in; 2.0.0's card is not known.
        let monitored = BTreeMap::from([("1.0.0".to_string(), 3)]);
        let latest = found.latest(1, &monitored);
        let shown: Vec<(&str, usize, usize)> = latest.iter().map(|w| (w.model, w.reports.len(), w.features)).collect();
        assert_eq!(shown, [("1.0.0", 2, 3), ("2.0.0", 1, 1)]);
        assert!(describe(&latest[0], false).contains(", 2 of 3 features reported ("), "{}", describe(&latest[0], false));
        assert!(!describe(&latest[1], false).contains("features reported"));
    }

    #[test]
    fn the_bundled_card_monitors_its_psi_reference() {
        let card = ModelCard::load(&ModelCard::bundled_path()).unwrap();
        let all = monitored([&card], None);
        assert_eq!(all.get(&card.model_version), Some(&card.psi.reference.len()));
        assert!(card.psi.reference.len() > 1);
        assert_eq!(monitored([&card], Some("amount_log")).get(&card.model_version), Some(&1));
        assert_eq!(monitored([&card], Some("no_such_feature")).get(&card.model_version), Some(&0));
    }
}
