//! jq expressions (run by jaq) over events: the expression sees the event's JSON view as `.` and
//! its metadata as `$meta` (`{kind, source, timestamp, id}`). Used by `filter` and by sinks with
//! a payload expression.

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;

use crate::config::{FieldError, FieldPath};
use crate::event::Event;

type Program = jaq_core::Filter<data::JustLut<Val>>;

/// A compiled jq program.
pub struct Jq(Program);

/// Compiles a jq program; errors carry the byte offset in the program and a message.
pub fn compile(code: &str) -> Result<Jq, Vec<(usize, String)>> {
    let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
    let funs = jaq_core::funs().chain(jaq_std::funs()).chain(jaq_json::funs());
    let loader = Loader::new(defs);
    let arena = Arena::default();
    let offset = |part: &str| jaq_core::load::span(code, part).start;
    let modules = loader.load(&arena, File { code, path: () }).map_err(|errs| {
        let mut out = Vec::new();
        for (_, e) in errs {
            match e {
                jaq_core::load::Error::Io(v) => out.extend(v.into_iter().map(|(_, m)| (0, m))),
                jaq_core::load::Error::Lex(v) => {
                    out.extend(v.into_iter().map(|(exp, at)| (offset(at), format!("expected {}", exp.as_str()))))
                }
                jaq_core::load::Error::Parse(v) => out.extend(v.into_iter().map(|(exp, at)| {
                    let found = if at.is_empty() {
                        "end of input".to_string()
                    } else {
                        format!("`{}`", at.chars().take(20).collect::<String>())
                    };
                    (offset(at), format!("expected {}, found {found}", exp.as_str()))
                })),
            }
        }
        out
    })?;
    let program = Compiler::default().with_funs(funs).with_global_vars(["$meta"]).compile(modules).map_err(|errs| {
        errs.into_iter()
            .flat_map(|(_, v)| v)
            .map(|(name, undefined)| (offset(name), format!("undefined {} `{name}`", undefined.as_str())))
            .collect::<Vec<_>>()
    })?;
    Ok(Jq(program))
}

/// The config errors of a jq expression in option `key`, with the column it fails at.
pub fn check(key: &str, code: &str, help: &str) -> Vec<FieldError> {
    match compile(code) {
        Ok(_) => Vec::new(),
        Err(errs) => errs
            .into_iter()
            .map(|(at, msg)| {
                let col = code[..at.min(code.len())].chars().count() + 1;
                FieldError::new(
                    FieldPath::key(key),
                    format!("{key} does not compile: {msg} (at character {col} of the expression)"),
                )
                .help(help)
            })
            .collect(),
    }
}

impl Jq {
    /// The program's first output on `event` (`None` when it outputs nothing).
    pub fn first(&self, event: &Event) -> Result<Option<Val>, String> {
        let mut json = Vec::with_capacity(256);
        event.write_json(&mut json);
        let input = jaq_json::read::parse_single(&json).map_err(|e| e.to_string())?;
        let meta = serde_json::to_vec(&event.meta_json()).expect("in-memory write");
        let meta = jaq_json::read::parse_single(&meta).map_err(|e| e.to_string())?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.0.lut, Vars::new([meta]));
        let mut out = self.0.id.run((ctx, input)).map(unwrap_valr);
        match out.next() {
            None => Ok(None),
            Some(Ok(v)) => Ok(Some(v)),
            Some(Err(e)) => Err(e.to_string()),
        }
    }

    /// Whether the first output is neither `false` nor `null` (no output is false).
    pub fn holds(&self, event: &Event) -> Result<bool, String> {
        Ok(self.first(event)?.is_some_and(|v| jaq_core::ValT::as_bool(&v)))
    }

    /// The first output as bytes: a string as its text, anything else as JSON.
    pub fn render(&self, event: &Event) -> Result<Option<Vec<u8>>, String> {
        Ok(self.first(event)?.map(|v| match v {
            Val::TStr(s) | Val::BStr(s) => s.to_vec(),
            other => other.to_string().into_bytes(),
        }))
    }
}
