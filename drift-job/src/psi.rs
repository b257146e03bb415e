//! Population Stability Index against the model card's training reference. Numeric features use
//! right-closed bins (-inf, e1], (e1, e2], ..., (e_{k-1}, inf); categorical features one bin per
//! training category plus `__unseen__`. Empty proportions become ε before
//! PSI = Σ (actual − expected) · ln(actual / expected), so PSI is always finite.

use scorer::card::Reference;

pub const UNSEEN: &str = "__unseen__";

/// How values of one feature fall into its reference bins.
#[derive(Debug, Clone, PartialEq)]
pub enum Binning {
    Numeric { edges: Vec<f64> },
    Categorical { categories: Vec<String> },
}

impl Binning {
    pub fn from_reference(reference: &Reference) -> (Binning, Vec<f64>) {
        match reference {
            Reference::Numeric { edges, expected } => (Binning::Numeric { edges: edges.clone() }, expected.clone()),
            Reference::Categorical { categories, expected } => {
                (Binning::Categorical { categories: categories.clone() }, expected.clone())
            }
        }
    }

    pub fn bins(&self) -> usize {
        match self {
            Binning::Numeric { edges } => edges.len() + 1,
            Binning::Categorical { categories } => categories.len() + 1,
        }
    }

    /// The bin of a numeric value: the number of edges strictly below it.
    pub fn numeric_bin(edges: &[f64], value: f64) -> usize {
        edges.partition_point(|&e| e < value)
    }

    /// The bin of a category: its index among the training categories, or the unseen bucket.
    pub fn categorical_bin(categories: &[String], value: &str) -> usize {
        categories.iter().position(|c| c == value).unwrap_or(categories.len())
    }

    /// Human-readable bin labels, e.g. `(-inf, 2.78]`, `(2.78, 3.21]`, `card`, `__unseen__`.
    pub fn labels(&self) -> Vec<String> {
        match self {
            Binning::Numeric { edges } => {
                let mut out = Vec::with_capacity(edges.len() + 1);
                let mut lo = "-inf".to_string();
                for e in edges {
                    let hi = format!("{e:.6}");
                    out.push(format!("({lo}, {hi}]"));
                    lo = hi;
                }
                out.push(format!("({lo}, inf)"));
                out
            }
            Binning::Categorical { categories } => {
                categories.iter().cloned().chain(std::iter::once(UNSEEN.to_string())).collect()
            }
        }
    }
}

/// PSI of observed `counts` against `expected` shares; proportions of 0 are replaced by `epsilon`.
/// Zero samples give 0.
pub fn psi(expected: &[f64], counts: &[u64], epsilon: f64) -> f64 {
    debug_assert_eq!(expected.len(), counts.len());
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let total = total as f64;
    expected
        .iter()
        .zip(counts)
        .map(|(&e, &c)| {
            let a = c as f64 / total;
            let a = if a == 0.0 { epsilon } else { a };
            let e = if e == 0.0 { epsilon } else { e };
            (a - e) * (a / e).ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_bins_are_right_closed() {
        let edges = [1.0, 2.0, 3.0];
        let bins: Vec<usize> = [0.5, 1.0, 1.0000001, 2.0, 2.5, 3.0, 3.5, f64::INFINITY, f64::NEG_INFINITY]
            .iter()
            .map(|&v| Binning::numeric_bin(&edges, v))
            .collect();
        assert_eq!(bins, [0, 0, 1, 1, 2, 2, 3, 3, 0]);
    }

    #[test]
    fn unseen_categories_get_their_own_bucket() {
        let cats = vec!["card".to_string(), "wallet".to_string()];
        assert_eq!(Binning::categorical_bin(&cats, "wallet"), 1);
        assert_eq!(Binning::categorical_bin(&cats, "voucher"), 2);
        let b = Binning::Categorical { categories: cats };
        assert_eq!(b.labels(), ["card", "wallet", UNSEEN]);
        assert_eq!(b.bins(), 3);
    }

    #[test]
    fn identical_distribution_has_zero_psi_and_empty_bins_stay_finite() {
        assert_eq!(psi(&[0.25, 0.25, 0.5], &[25, 25, 50], 1e-4), 0.0);
        assert_eq!(psi(&[0.5, 0.5], &[0, 0], 1e-4), 0.0);
        let p = psi(&[0.5, 0.5, 0.0], &[0, 10, 0], 1e-4);
        assert!(p.is_finite() && p > 1.0, "{p}");
        // Hand-computed: actual (0.0001, 1.0), expected (0.5, 0.5).
        let want = (1e-4 - 0.5) * (1e-4f64 / 0.5).ln() + (1.0 - 0.5) * (1.0f64 / 0.5).ln();
        assert!((psi(&[0.5, 0.5], &[0, 10], 1e-4) - want).abs() < 1e-12);
    }

    #[test]
    fn numeric_labels() {
        let b = Binning::Numeric { edges: vec![1.0, 2.5] };
        assert_eq!(b.labels(), ["(-inf, 1.000000]", "(1.000000, 2.500000]", "(2.500000, inf)"]);
    }
}
