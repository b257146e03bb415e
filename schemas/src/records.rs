//! The Rust side of every Avro schema in `schemas/avro/`. Field names and order follow the
//! `.avsc` files exactly; enum symbols are the lowercase wire symbols.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethod {
    Card,
    BankTransfer,
    Wallet,
    Crypto,
}

impl PaymentMethod {
    pub const ALL: [PaymentMethod; 4] =
        [PaymentMethod::Card, PaymentMethod::BankTransfer, PaymentMethod::Wallet, PaymentMethod::Crypto];

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentMethod::Card => "card",
            PaymentMethod::BankTransfer => "bank_transfer",
            PaymentMethod::Wallet => "wallet",
            PaymentMethod::Crypto => "crypto",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub transaction_id: String,
    pub user_id: String,
    pub amount: f64,
    pub currency: String,
    pub payment_method: PaymentMethod,
    pub merchant_id: Option<String>,
    pub country: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
}

/// A valid payment (the seed's example, paid by card in the US) for unit tests to vary.
#[cfg(test)]
impl Transaction {
    pub(crate) fn example() -> Self {
        Transaction {
            transaction_id: "t1".into(),
            user_id: "12345".into(),
            amount: 149.99,
            currency: "USD".into(),
            payment_method: PaymentMethod::Card,
            merchant_id: Some("merchant_42".into()),
            country: Some("US".into()),
            timestamp: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approve,
    Review,
    Block,
}

impl Verdict {
    pub const ALL: [Verdict; 3] = [Verdict::Approve, Verdict::Review, Verdict::Block];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Review => "review",
            Verdict::Block => "block",
        }
    }

    /// The risk level reported with this verdict.
    pub fn risk_level(self) -> RiskLevel {
        match self {
            Verdict::Approve => RiskLevel::Low,
            Verdict::Review => RiskLevel::Medium,
            Verdict::Block => RiskLevel::High,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskLevel {
    Low,
    Medium,
    High,
}

impl RiskLevel {
    pub const ALL: [RiskLevel; 3] = [RiskLevel::Low, RiskLevel::Medium, RiskLevel::High];

    pub fn as_str(self) -> &'static str {
        match self {
            RiskLevel::Low => "low",
            RiskLevel::Medium => "medium",
            RiskLevel::High => "high",
        }
    }
}

/// Feature names are usually the model card's static names, so they are borrowed, not copied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureValue {
    pub name: Cow<'static, str>,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureContribution {
    pub name: Cow<'static, str>,
    pub value: f64,
    /// This feature's additive share of the logit (coefficient × scaled value).
    pub contribution: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub transaction_id: String,
    pub user_id: String,
    pub decision: Verdict,
    pub fraud_probability: f64,
    pub risk_level: RiskLevel,
    pub model_version: String,
    pub features: Vec<FeatureValue>,
    pub top_features: Vec<FeatureContribution>,
    pub degraded: bool,
    pub user_features_found: bool,
    pub amount: f64,
    pub currency: String,
    pub payment_method: PaymentMethod,
    pub transaction_timestamp: i64,
    pub decided_at: i64,
    pub processing_latency_ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusinessEventKind {
    Revenue,
    FraudBlocked,
    ReviewQueued,
}

impl BusinessEventKind {
    pub fn for_verdict(verdict: Verdict) -> Self {
        match verdict {
            Verdict::Approve => BusinessEventKind::Revenue,
            Verdict::Review => BusinessEventKind::ReviewQueued,
            Verdict::Block => BusinessEventKind::FraudBlocked,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BusinessEvent {
    pub transaction_id: String,
    pub user_id: String,
    pub kind: BusinessEventKind,
    pub amount: f64,
    pub currency: String,
    pub model_version: String,
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    pub transaction_id: String,
    pub is_fraud: bool,
    pub labelled_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftSeverity {
    None,
    Moderate,
    Significant,
}

impl DriftSeverity {
    /// PSI from which a feature's drift is moderate.
    pub const MODERATE: f64 = 0.1;
    /// PSI from which it is significant.
    pub const SIGNIFICANT: f64 = 0.25;

    /// How a PSI value is graded.
    pub fn of(psi: f64) -> Self {
        if psi >= Self::SIGNIFICANT {
            Self::Significant
        } else if psi >= Self::MODERATE {
            Self::Moderate
        } else {
            Self::None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Moderate => "moderate",
            Self::Significant => "significant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftBin {
    pub label: String,
    pub expected: f64,
    pub actual: f64,
    pub count: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftReport {
    pub model_version: String,
    pub feature: String,
    pub window_start: i64,
    pub window_end: i64,
    pub samples: i64,
    pub psi: f64,
    pub severity: DriftSeverity,
    pub bins: Vec<DriftBin>,
}
