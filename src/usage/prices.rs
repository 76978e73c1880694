//! What a message would cost when OpenCode stored no cost (subscriptions, free providers,
//! older releases): a price table built into the binary (`prices.csv`, a dated snapshot of
//! models.dev, the catalogue OpenCode itself uses) with the user's own prices over it
//! (`[prices."provider/model"]` in a pipeline, `ocpipe stats --prices FILE`).
//!
//! Every message's cost says where it came from ([`CostSource`]); sums keep the parts apart
//! (`Usage::cost_stored`, `cost_priced`, `unpriced_messages`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::Tokens;

/// Dollars per million tokens of each kind. Reasoning is billed as output; a missing cache
/// price is the input price.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    pub cache_read: Option<f64>,
    pub cache_write: Option<f64>,
}

impl Price {
    /// The cost of `tokens` at this price, in dollars.
    pub fn of(&self, t: &Tokens) -> f64 {
        let per = |n: u64, price: f64| n as f64 * price / 1e6;
        per(t.input, self.input)
            + per(t.output + t.reasoning, self.output)
            + per(t.cache_read, self.cache_read.unwrap_or(self.input))
            + per(t.cache_write, self.cache_write.unwrap_or(self.input))
    }
}

/// Where a message's cost came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CostSource {
    /// OpenCode stored it.
    Stored,
    /// OpenCode stored none; the price table gave it.
    Priced,
    /// OpenCode stored none and no price is known: counted as 0.
    Unknown,
    /// Nothing to pay for (no tokens).
    Free,
}

/// A message's cost and where it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MessageCost {
    pub dollars: f64,
    pub source: CostSource,
}

impl MessageCost {
    pub fn stored(dollars: f64) -> Self {
        MessageCost { dollars, source: if dollars > 0.0 { CostSource::Stored } else { CostSource::Free } }
    }
}

/// Providers whose prices stand for a model that another provider (a gateway, a subscription)
/// resells under the same name, most authoritative first.
const FIRST_PARTY: [&str; 10] =
    ["anthropic", "openai", "google", "xai", "deepseek", "mistral", "moonshotai", "zai", "alibaba", "openrouter"];

/// The table: exact `provider/model` rows, then the model's name under any provider.
#[derive(Debug, Default)]
pub struct Prices {
    exact: HashMap<String, HashMap<String, Price>>,
    by_model: HashMap<String, Price>,
    /// Where the built-in rows came from (the CSV's comment line).
    pub origin: String,
}

/// A model name as gateways vary it: lowercase, `.` as `-`.
fn normalized(model: &str) -> String {
    model.to_ascii_lowercase().replace('.', "-")
}

impl Prices {
    /// The table built into the binary.
    pub fn builtin() -> Arc<Prices> {
        static BUILTIN: OnceLock<Arc<Prices>> = OnceLock::new();
        BUILTIN
            .get_or_init(|| Arc::new(Prices::parse(include_str!("prices.csv")).expect("the built-in table parses")))
            .clone()
    }

    fn parse(csv_text: &str) -> Result<Prices, csv::Error> {
        #[derive(Deserialize)]
        struct Row {
            provider: String,
            model: String,
            input: f64,
            output: f64,
            cache_read: Option<f64>,
            cache_write: Option<f64>,
        }
        let origin = csv_text
            .lines()
            .find_map(|l| l.strip_prefix("# Source: "))
            .unwrap_or("built-in table")
            .trim_end_matches('.')
            .to_string();
        let mut prices = Prices { origin, ..Prices::default() };
        let mut reader = csv::ReaderBuilder::new().comment(Some(b'#')).from_reader(csv_text.as_bytes());
        let mut rank: HashMap<String, usize> = HashMap::new();
        for row in reader.deserialize::<Row>() {
            let r = row?;
            let price =
                Price { input: r.input, output: r.output, cache_read: r.cache_read, cache_write: r.cache_write };
            let key = normalized(&r.model);
            let this = FIRST_PARTY.iter().position(|p| *p == r.provider).unwrap_or(FIRST_PARTY.len());
            if price.input + price.output > 0.0 && rank.get(&key).is_none_or(|&best| this < best) {
                rank.insert(key.clone(), this);
                prices.by_model.insert(key, price);
            }
            prices.exact.entry(r.provider).or_default().insert(r.model, price);
        }
        Ok(prices)
    }

    /// This table with `overrides` (`"provider/model"` → price) over it.
    pub fn with(&self, overrides: &BTreeMap<String, Price>) -> Prices {
        let mut exact = self.exact.clone();
        let mut by_model = self.by_model.clone();
        for (key, price) in overrides {
            let (provider, model) = key.split_once('/').unwrap_or(("", key));
            exact.entry(provider.to_string()).or_default().insert(model.to_string(), *price);
            // A price of your own for a model nobody else sells stands for it elsewhere too.
            if price.input + price.output > 0.0 {
                by_model.entry(normalized(model)).or_insert(*price);
            }
        }
        let origin = format!(
            "your {} price{} and {}",
            overrides.len(),
            if overrides.len() == 1 { "" } else { "s" },
            self.origin
        );
        Prices { exact, by_model, origin }
    }

    /// The price of a model: its provider's row, else the model's name under the most
    /// authoritative provider that sells it. A row of zeros (a subscription's plan, a free
    /// tier) gives way to a paid price of the same model where there is one: what the tokens
    /// would have cost; a model nobody charges for stays free.
    pub fn find(&self, provider: &str, model: &str) -> Option<Price> {
        let exact = self.exact.get(provider).and_then(|m| m.get(model)).copied();
        match exact {
            Some(p) if p.input + p.output > 0.0 => Some(p),
            _ => self.by_model.get(&normalized(model)).copied().or(exact),
        }
    }

    /// A message's cost: as stored when OpenCode stored one, else priced, else unknown.
    pub fn cost(&self, provider: Option<&str>, model: Option<&str>, stored: f64, tokens: &Tokens) -> MessageCost {
        price_with(stored, tokens, || self.find(provider.unwrap_or(""), model?))
    }
}

/// A message's cost given a way to find its price (looked up only when needed).
pub fn price_with(stored: f64, tokens: &Tokens, price: impl FnOnce() -> Option<Price>) -> MessageCost {
    if stored > 0.0 {
        return MessageCost { dollars: stored, source: CostSource::Stored };
    }
    if tokens.total() == 0 {
        return MessageCost { dollars: 0.0, source: CostSource::Free };
    }
    match price() {
        Some(p) => MessageCost { dollars: p.of(tokens), source: CostSource::Priced },
        None => MessageCost { dollars: 0.0, source: CostSource::Unknown },
    }
}

/// `[prices."provider/model"]` tables, for pipelines and `ocpipe stats --prices`.
pub type PriceOverrides = BTreeMap<String, Price>;

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "# Source: a test table of 2026-12-04.\nprovider,model,input,output,cache_read,cache_write\n\
        anthropic,claude-sonnet-4-5,3,15,0.3,3.75\nopenrouter,anthropic/claude-sonnet-4.5,3.3,16,,\n\
        gateway,claude-sonnet-4.5,0,0,0,0\nopencode,big-pickle,0,0,0,0\n";

    fn tokens(input: u64, output: u64, cache_read: u64) -> Tokens {
        Tokens { input, output, reasoning: 0, cache_read, cache_write: 0 }
    }

    #[test]
    fn stored_costs_win_then_exact_rows_then_the_first_party_price() {
        let p = Prices::parse(TABLE).unwrap();
        assert_eq!(p.origin, "a test table of 2026-12-04");
        let t = tokens(1_000_000, 100_000, 2_000_000);
        assert_eq!(
            p.cost(Some("anthropic"), Some("claude-sonnet-4-5"), 0.5, &t),
            MessageCost { dollars: 0.5, source: CostSource::Stored }
        );
        let priced = p.cost(Some("anthropic"), Some("claude-sonnet-4-5"), 0.0, &t);
        assert_eq!(priced.source, CostSource::Priced);
        assert!((priced.dollars - (3.0 + 1.5 + 0.6)).abs() < 1e-12, "{priced:?}");
        // A reseller without a row: the first-party price of the same name (dots as dashes).
        let resold = p.cost(Some("github-copilot"), Some("claude-sonnet-4.5"), 0.0, &t);
        assert!((resold.dollars - 5.1).abs() < 1e-12, "{resold:?}");
        // A plan listed at zero (a subscription) is priced as the model's maker sells it…
        let plan = p.cost(Some("gateway"), Some("claude-sonnet-4.5"), 0.0, &t);
        assert!((plan.dollars - 5.1).abs() < 1e-12, "{plan:?}");
        // …and a model nobody charges for is free, not unknown.
        assert_eq!(
            p.cost(Some("opencode"), Some("big-pickle"), 0.0, &t),
            MessageCost { dollars: 0.0, source: CostSource::Priced }
        );
        assert_eq!(p.cost(Some("x"), Some("nobody-sells-this"), 0.0, &t).source, CostSource::Unknown);
        assert_eq!(p.cost(Some("x"), Some("nobody-sells-this"), 0.0, &Tokens::default()).source, CostSource::Free);
    }

    #[test]
    fn the_users_prices_go_over_the_table() {
        let mine: PriceOverrides =
            [("local/llama".to_string(), Price { input: 1.0, output: 2.0, cache_read: None, cache_write: None })]
                .into();
        let p = Prices::parse(TABLE).unwrap().with(&mine);
        let c = p.cost(Some("local"), Some("llama"), 0.0, &tokens(1_000_000, 1_000_000, 1_000_000));
        assert_eq!(c, MessageCost { dollars: 4.0, source: CostSource::Priced });
    }

    #[test]
    fn the_built_in_table_is_dated_and_knows_the_common_models() {
        let p = Prices::builtin();
        assert!(p.origin.starts_with("models.dev") && p.origin.contains("commit"), "{}", p.origin);
        let sonnet = p.find("anthropic", "claude-sonnet-4-5").unwrap();
        assert_eq!((sonnet.input, sonnet.output), (3.0, 15.0));
        assert!(p.find("openai", "gpt-5").is_some());
    }
}
