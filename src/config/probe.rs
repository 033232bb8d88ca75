//! Finding where a node is in a document that has already been parsed.
//!
//! `serde_yaml_ng` exposes positions only on errors. To learn where a node is, [`locate`] reads the
//! text again with a visitor that walks to that node and fails on it on purpose: the error comes back
//! stamped with the node's line and column. This uses the real parser, so flow style, comments,
//! quoting and anchors cannot fool it as a text search could; configuration files are small, so
//! reading one again costs nothing that matters.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step on the way from the document root to a node.
#[derive(Debug, Clone, Copy)]
pub(super) enum Step {
    /// The value under this key of a map (keys are matched as written: no aliases).
    Key(&'static str),
    /// This item of a list.
    Index(usize),
}

/// Whether the last [`Step::Key`] designates the key itself or its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    Key,
    Value,
}

/// Marks the deliberate error, so that no other error is taken for it.
const FOUND: &str = "\0found";

/// The 1-based (line, column) of the node at `steps`, or `None` if there is no such node.
pub(super) fn locate(text: &str, steps: &[Step], target: Target) -> Option<(usize, usize)> {
    let error = Probe { steps, target }.deserialize(serde_yaml_ng::Deserializer::from_str(text)).err()?;
    if !error.to_string().contains(FOUND) {
        return None;
    }
    error.location().map(|l| (l.line(), l.column()))
}

/// The 1-based (line, column) of the first node of the second document in `text`, if it holds
/// more than one: `serde_yaml_ng` gives its error about several documents no position.
pub(super) fn second_document(text: &str) -> Option<(usize, usize)> {
    let mut documents = serde_yaml_ng::Deserializer::from_str(text);
    documents.next()?;
    let second = documents.next()?;
    let error = Probe { steps: &[], target: Target::Value }.deserialize(second).err()?;
    error.location().map(|l| (l.line(), l.column()))
}

struct Probe<'s> {
    steps: &'s [Step],
    target: Target,
}

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl Probe<'_> {
    /// Arrived on a scalar: fail here if it is the target, else it is a dead end.
    fn scalar<E: de::Error>(self) -> Result<(), E> {
        if self.steps.is_empty() {
            Err(E::custom(FOUND))
        } else {
            Ok(())
        }
    }

    fn rest(&self) -> Probe<'_> {
        Probe { steps: &self.steps[1..], target: self.target }
    }
}

impl<'de> Visitor<'de> for Probe<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.scalar()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.scalar()
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.scalar()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.scalar()
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.scalar()
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let wanted = match self.steps.first() {
            None => return Err(de::Error::custom(FOUND)),
            Some(Step::Key(key)) => Some(*key),
            Some(Step::Index(_)) => None,
        };
        let fail_on_key = self.steps.len() == 1 && self.target == Target::Key;
        while let Some(matched) = map.next_key_seed(KeyProbe { wanted, fail: fail_on_key })? {
            if matched {
                map.next_value_seed(self.rest())?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let wanted = match self.steps.first() {
            None => return Err(de::Error::custom(FOUND)),
            Some(Step::Index(index)) => Some(*index),
            Some(Step::Key(_)) => None,
        };
        let mut index = 0;
        loop {
            let more = if Some(index) == wanted {
                seq.next_element_seed(self.rest())?.is_some()
            } else {
                seq.next_element::<IgnoredAny>()?.is_some()
            };
            if !more {
                return Ok(());
            }
            index += 1;
        }
    }
}

/// A map key during the walk: tells whether it is the wanted one, or fails on it when the key
/// itself is the target.
struct KeyProbe {
    wanted: Option<&'static str>,
    fail: bool,
}

impl<'de> DeserializeSeed<'de> for KeyProbe {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        // Any scalar reads as its text here, which is all a key match needs.
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyProbe {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        let matched = self.wanted == Some(key);
        if matched && self.fail {
            Err(E::custom(FOUND))
        } else {
            Ok(matched)
        }
    }
}
