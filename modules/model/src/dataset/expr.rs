//! IceProd's expression language: `$(name)`, `$steering(x)`, `$eval(1+2)`, … inside any string
//! of a dataset config (SPEC §3). [`parse`] checks a string without evaluating it (validation
//! uses it); [`expand`] evaluates one in an [`Env`]; [`expand_value`] expands every string of a
//! JSON value.
//!
//! Grammar. Text is kept as written except:
//! - `\c` is `c` for any character `c` (IceProd's escape; the backslash is dropped);
//! - `$(arg)` and `$name(arg)`, `name` an identifier followed at once by `(`, is a call; the
//!   argument runs to the matching `)` (plain parentheses inside must balance) and may hold
//!   calls itself, which are evaluated first (`$eval($(job)+1)`);
//! - a call followed at once by `[index]` is indexed: an element of a list, a key of an object
//!   or a character of a string; if that fails the text `value[index]` is kept, as IceProd does.
//!
//! A `$` not followed by a call (`$HOME`, `$5`, `${x}`) is plain text, so shell snippets in
//! module arguments pass through. A call that is never closed is an error.
//!
//! Results print as an IceProd worker prints them (Python's `str`, lists as `json.dumps`). A
//! looked-up value that holds expressions is expanded too, in the scope it was found in.
//! Evaluation is bounded: [`MAX_DEPTH`] levels of nesting or reference, a cap on the number of
//! calls and on the text produced, and a time limit ([`MAX_TIME`], or the deadline an
//! [`Env`] carries), so no config can make it hang or exhaust memory.

use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::dataset::arith;
use crate::dataset::config::{Job, Parameters};
use crate::dataset::error::ExprError;
use crate::dataset::pyfmt::{self, parse_py_float, py_str};

/// Deepest nesting of calls, counting both `$eval($(x))`-style nesting and a value that refers
/// to another value.
pub const MAX_DEPTH: usize = 10;
/// Most calls evaluated in one expansion.
const MAX_CALLS: usize = 100_000;
/// Longest text one expansion may produce.
const MAX_OUTPUT: usize = 16 << 20;
/// Most bytes of text one expansion may assemble in all, intermediate results included.
const MAX_WORK: usize = 64 << 20;
/// Deepest JSON nesting walked by [`expand_value`].
const MAX_VALUE_DEPTH: usize = 256;
/// Longest one expansion may run, whatever the other limits allow (a fast machine reaches the
/// call and size caps well before it; a slow or busy one stops here).
pub const MAX_TIME: Duration = Duration::from_secs(2);
/// The clock is read once per this many calls or appended pieces: often enough to stop within
/// milliseconds of the limit, rarely enough to cost nothing.
const CLOCK_EVERY: usize = 64;

/// A parsed string: text and calls, in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ast {
    /// The string's pieces in order: text runs and the calls between them.
    pub parts: Vec<Part>,
}

/// One piece of a parsed string.
#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    /// Text kept as written, escapes resolved (`\$` is `$`).
    Text(String),
    /// A call, evaluated when the string is expanded.
    Call(Call),
}

/// `$func(arg)` or `$func(arg)[index]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// The function called.
    pub func: Func,
    /// The argument, parsed: it may hold calls, which are evaluated first.
    pub arg: Ast,
    /// The `[index]` right after the call, parsed; `None` without one.
    pub index: Option<Ast>,
}

/// The functions of the language.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Func {
    /// `$(name)`: parameters (innermost scope first), then top-level fields, then options.
    Lookup,
    /// `$steering(x)`: a steering parameter.
    Steering,
    /// `$system(x)`: a value of `steering.system`.
    System,
    /// `$environ(x)`: an environment variable, through the caller's lookup.
    Environ,
    /// `$options(x)` or `$args(x)`: a value of `options`.
    Options,
    /// `$metadata(x)`: a value of `difplus.dif`, else of `difplus.plus`.
    Metadata,
    /// `$eval(arithmetic)`.
    Eval,
    /// `$choice(a,b,…)`: one of the choices, picked by the environment's seed.
    Choice,
    /// `$sprintf("fmt",args…)`: Python %-formatting.
    Sprintf,
    /// `$sum(list)`: the sum of a list of numbers (a JSON list, or comma-separated).
    Sum,
    /// `$min(list)`: the smallest item (numbers by value, strings by text).
    Min,
    /// `$max(list)`: the largest item (numbers by value, strings by text).
    Max,
    /// `$len(x)`: the number of items of a list or object, or characters of a string.
    Len,
    /// `$name(…)` with a name that is none of the above; an error when evaluated.
    Unknown(String),
}

impl Func {
    fn from_name(name: &str) -> Func {
        match name {
            "" => Func::Lookup,
            "steering" => Func::Steering,
            "system" => Func::System,
            "environ" => Func::Environ,
            "args" | "options" => Func::Options,
            "metadata" => Func::Metadata,
            "eval" => Func::Eval,
            "choice" => Func::Choice,
            "sprintf" => Func::Sprintf,
            "sum" => Func::Sum,
            "min" => Func::Min,
            "max" => Func::Max,
            "len" => Func::Len,
            other => Func::Unknown(other.to_string()),
        }
    }

    /// The name as written after `$` (`options` for `$args` too).
    pub fn name(&self) -> &str {
        match self {
            Func::Lookup => "",
            Func::Steering => "steering",
            Func::System => "system",
            Func::Environ => "environ",
            Func::Options => "options",
            Func::Metadata => "metadata",
            Func::Eval => "eval",
            Func::Choice => "choice",
            Func::Sprintf => "sprintf",
            Func::Sum => "sum",
            Func::Min => "min",
            Func::Max => "max",
            Func::Len => "len",
            Func::Unknown(name) => name,
        }
    }
}

impl Ast {
    /// True if the string holds at least one call.
    pub fn has_calls(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Call(_)))
    }

    /// The text of a string without calls, escapes resolved.
    pub fn plain_text(&self) -> String {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Text(t) => Some(t.as_str()),
                Part::Call(_) => None,
            })
            .collect()
    }

    /// Names of unknown functions called anywhere in the string, nested calls included.
    pub fn unknown_functions(&self) -> Vec<String> {
        let mut names = Vec::new();
        self.collect_unknown(&mut names);
        names
    }

    fn collect_unknown(&self, names: &mut Vec<String>) {
        for part in &self.parts {
            if let Part::Call(call) = part {
                if let Func::Unknown(name) = &call.func {
                    names.push(name.clone());
                }
                call.arg.collect_unknown(names);
                if let Some(index) = &call.index {
                    index.collect_unknown(names);
                }
            }
        }
    }
}

// ---- parsing ----

/// Parses `text` without evaluating it. Fails on a call that is never closed and on calls
/// nested more than [`MAX_DEPTH`] deep; an unknown function name is not a parse error (see
/// [`Ast::unknown_functions`]).
pub fn parse(text: &str) -> Result<Ast, ExprError> {
    Parser { text, pos: 0 }.template(Until::End, 0, 0)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Until {
    End,
    CloseParen,
    CloseBracket,
}

struct Parser<'t> {
    text: &'t str,
    pos: usize,
}

fn is_special(b: u8) -> bool {
    matches!(b, b'\\' | b'$' | b'(' | b')' | b'[' | b']')
}

impl Parser<'_> {
    /// Reads text and calls until `until`, which is consumed. `depth` is the number of calls
    /// this template is inside; `opened` is where the enclosing `$…(` or `[` began.
    fn template(&mut self, until: Until, depth: usize, opened: usize) -> Result<Ast, ExprError> {
        let bytes = self.text.as_bytes();
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut nesting = 0usize;
        loop {
            let Some(&b) = bytes.get(self.pos) else {
                return match until {
                    Until::End => {
                        flush(&mut text, &mut parts);
                        Ok(Ast { parts })
                    }
                    Until::CloseParen | Until::CloseBracket => Err(ExprError::Unterminated {
                        opened: self.opener(opened),
                        offset: opened,
                    }),
                };
            };
            let (open, close) = match until {
                Until::End => (None, None),
                Until::CloseParen => (Some(b'('), Some(b')')),
                Until::CloseBracket => (Some(b'['), Some(b']')),
            };
            if b == b'\\' {
                self.pos += 1;
                match self.text[self.pos..].chars().next() {
                    Some(c) => {
                        text.push(c);
                        self.pos += c.len_utf8();
                    }
                    None => text.push('\\'),
                }
            } else if b == b'$' {
                match self.call_start() {
                    Some((func, paren)) => {
                        if depth >= MAX_DEPTH {
                            return Err(ExprError::TooDeep);
                        }
                        let start = self.pos;
                        self.pos = paren + 1;
                        let arg = self.template(Until::CloseParen, depth + 1, start)?;
                        let index = if bytes.get(self.pos) == Some(&b'[') {
                            let at = self.pos;
                            self.pos += 1;
                            Some(self.template(Until::CloseBracket, depth + 1, at)?)
                        } else {
                            None
                        };
                        flush(&mut text, &mut parts);
                        parts.push(Part::Call(Call { func, arg, index }));
                    }
                    None => {
                        text.push('$');
                        self.pos += 1;
                    }
                }
            } else if Some(b) == open {
                nesting += 1;
                text.push(b as char);
                self.pos += 1;
            } else if Some(b) == close {
                self.pos += 1;
                if nesting == 0 {
                    flush(&mut text, &mut parts);
                    return Ok(Ast { parts });
                }
                nesting -= 1;
                text.push(b as char);
            } else {
                // Copy a run of ordinary text at once. Special bytes are ASCII, so the run
                // ends on a character boundary.
                let run = bytes[self.pos + 1..]
                    .iter()
                    .position(|&c| is_special(c))
                    .map_or(bytes.len(), |i| self.pos + 1 + i);
                text.push_str(&self.text[self.pos..run]);
                self.pos = run;
            }
        }
    }

    /// The text that opened a call or index at `at`: `$eval(`, `$(` or `[`.
    fn opener(&self, at: usize) -> String {
        let rest = &self.text[at..];
        let end = rest.find(['(', '[']).map_or(rest.len(), |i| i + 1);
        rest[..end].to_string()
    }

    /// At a `$`: `$(` or `$identifier(`; returns the function and where its `(` is.
    fn call_start(&self) -> Option<(Func, usize)> {
        let bytes = self.text.as_bytes();
        let name_start = self.pos + 1;
        let name_len = bytes[name_start..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
            .count();
        let paren = name_start + name_len;
        let name = &self.text[name_start..paren];
        let valid_name = name.is_empty() || !name.as_bytes()[0].is_ascii_digit();
        (valid_name && bytes.get(paren) == Some(&b'(')).then(|| (Func::from_name(name), paren))
    }
}

fn flush(text: &mut String, parts: &mut Vec<Part>) {
    if !text.is_empty() {
        parts.push(Part::Text(std::mem::take(text)));
    }
}

// ---- the environment ----

/// What `$(name)` and the other functions can see. Build one per job with [`Env::new`], add the
/// per-job options (`job`, `dataset`, `jobs_submitted`, `task`, `task_id`, `iter`) with
/// [`Env::with_option`], and a scope per level with [`Env::with_scope`] (task, then tray, then
/// module).
#[derive(Clone, Default)]
pub struct Env<'a> {
    job: Option<&'a Job>,
    /// Parameter maps, outermost (steering) first.
    scopes: Vec<&'a Parameters>,
    /// How many of `scopes` came from the job (the steering parameters): a `$steering(x)` value
    /// is expanded seeing only those.
    base_scopes: usize,
    options: Map<String, Value>,
    environ: Option<&'a EnvironLookup<'a>>,
    seed: u64,
    /// When evaluation must stop, if earlier than [`MAX_TIME`] from the start of an expansion.
    deadline: Option<Instant>,
}

/// How `$environ(x)` reads a variable: the caller decides (tests pass a map; a server would
/// pass the worker's environment or nothing).
pub type EnvironLookup<'a> = dyn Fn(&str) -> Option<String> + 'a;

impl<'a> Env<'a> {
    /// An environment with nothing in it.
    pub fn empty() -> Env<'a> {
        Env::default()
    }

    /// The environment of `job`: its steering parameters as the outermost scope, its top-level
    /// fields, a copy of its `options`, steering, system and metadata.
    pub fn new(job: &'a Job) -> Env<'a> {
        Env {
            job: Some(job),
            scopes: vec![&job.steering().parameters],
            base_scopes: 1,
            options: job.options.clone(),
            environ: None,
            seed: 0,
            deadline: None,
        }
    }

    /// The environment of task `task_index` of `job` (steering, then task parameters).
    pub fn for_task(job: &'a Job, task_index: usize) -> Env<'a> {
        let env = Env::new(job);
        match job.tasks.get(task_index) {
            Some(task) => env.with_scope(&task.parameters),
            None => env,
        }
    }

    /// Adds an inner scope of parameters, seen before every scope already there.
    pub fn with_scope(mut self, parameters: &'a Parameters) -> Env<'a> {
        self.scopes.push(parameters);
        self
    }

    /// Sets one option (`job`, `dataset`, `iter`, …), replacing the config's value.
    pub fn with_option(mut self, key: &str, value: impl Into<Value>) -> Env<'a> {
        self.options.insert(key.to_string(), value.into());
        self
    }

    /// Sets the lookup `$environ(x)` uses; without one every `$environ(x)` fails.
    pub fn with_environ(mut self, lookup: &'a EnvironLookup<'a>) -> Env<'a> {
        self.environ = Some(lookup);
        self
    }

    /// Sets the seed of `$choice`: the same seed and argument always give the same choice, so
    /// a job's values can be computed again (use e.g. the job index).
    pub fn with_seed(mut self, seed: u64) -> Env<'a> {
        self.seed = seed;
        self
    }

    /// Sets a deadline shared by every expansion in this environment (a whole config checked
    /// in one time budget); each expansion still stops after [`MAX_TIME`] at most.
    pub fn with_deadline(mut self, deadline: Instant) -> Env<'a> {
        self.deadline = Some(deadline);
        self
    }

    /// The options `$options(x)` sees: the config's own, with [`Env::with_option`]'s over them.
    pub fn options(&self) -> &Map<String, Value> {
        &self.options
    }
}

/// A top-level field of the config as `$(name)` sees it. IceProd skips fields whose value is an
/// object (`options`, `steering`, `difplus`), so `$(options)` finds an option named `options`.
fn top_level(job: &Job, name: &str) -> Option<Value> {
    let value = match name {
        "version" => Value::Number(job.version.clone()),
        "tasks" => serde_json::to_value(&job.tasks).ok()?,
        "description" => Value::String(job.description.clone()),
        "categories" => Value::Array(job.categories.clone()),
        "dataset" => job.dataset.clone()?,
        "parent_id" => job.parent_id.clone()?,
        "options" | "steering" | "difplus" => return None,
        other => job.extra.get(other)?.clone(),
    };
    (!value.is_object() && !value.is_null()).then_some(value)
}

// ---- evaluation ----

/// Expands every expression in `text`.
pub fn expand(text: &str, env: &Env) -> Result<String, ExprError> {
    if !may_hold_calls(text) {
        return Ok(text.to_string());
    }
    let ast = parse(text)?;
    Evaluator::new(env).template(&ast, env.scopes.len(), 0)
}

/// Expands every string in `value` (object keys too), keeping the JSON structure. Strings stay
/// strings: use [`infer_type`] where IceProd would turn a result into a number.
pub fn expand_value(value: &Value, env: &Env) -> Result<Value, ExprError> {
    let mut evaluator = Evaluator::new(env);
    let mut path = String::new();
    evaluator
        .value(value, env.scopes.len(), 0, &mut path, 0)
        .map_err(|(path, error)| ExprError::InValue {
            path,
            error: Box::new(error),
        })
}

/// IceProd's reading of a result as a typed value: JSON if it parses as JSON (single quotes
/// read as double), else `true`/`false` in any case, else a whole number, else a float, else
/// the text. A text wrapped in double quotes stays text, quotes included.
pub fn infer_type(text: &str) -> Value {
    if text.starts_with('"') && text.ends_with('"') {
        return Value::String(text.to_string());
    }
    if let Ok(v) = serde_json::from_str::<Value>(&text.replace('\'', "\"")) {
        return v;
    }
    match text.to_ascii_lowercase().as_str() {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = text.parse::<u64>() {
            return Value::from(n);
        }
    }
    match parse_py_float(text)
        .ok()
        .and_then(serde_json::Number::from_f64)
    {
        Some(n) => Value::Number(n),
        None => Value::String(text.to_string()),
    }
}

struct Evaluator<'e, 'a> {
    env: &'e Env<'a>,
    calls: usize,
    work: usize,
    /// Calls and appended pieces since the clock was last read.
    ticks: usize,
    deadline: Instant,
}

type ValueResult = Result<Value, (String, ExprError)>;

impl<'e, 'a> Evaluator<'e, 'a> {
    fn new(env: &'e Env<'a>) -> Self {
        let limit = Instant::now() + MAX_TIME;
        Evaluator {
            env,
            calls: 0,
            work: 0,
            ticks: 0,
            deadline: env.deadline.map_or(limit, |d| d.min(limit)),
        }
    }

    /// Fails once the deadline has passed; reads the clock every [`CLOCK_EVERY`] ticks.
    fn tick(&mut self) -> Result<(), ExprError> {
        self.ticks += 1;
        if self.ticks >= CLOCK_EVERY {
            self.ticks = 0;
            if Instant::now() >= self.deadline {
                return Err(ExprError::TooSlow);
            }
        }
        Ok(())
    }

    /// Evaluates a template seeing the first `scopes` parameter scopes; its calls are at
    /// `depth + 1`.
    fn template(&mut self, ast: &Ast, scopes: usize, depth: usize) -> Result<String, ExprError> {
        let mut out = String::new();
        for part in &ast.parts {
            match part {
                Part::Text(t) => self.append(&mut out, t)?,
                Part::Call(call) => {
                    let value = self.call(call, scopes, depth + 1)?;
                    self.append(&mut out, &value)?;
                }
            }
        }
        Ok(out)
    }

    fn append(&mut self, out: &mut String, piece: &str) -> Result<(), ExprError> {
        self.tick()?;
        self.work += piece.len();
        if self.work > MAX_WORK {
            return Err(ExprError::TooLarge {
                what: "takes too much work (parameters referring to each other many times?)",
            });
        }
        if out.len() + piece.len() > MAX_OUTPUT {
            return Err(ExprError::TooLarge {
                what: "produces more than 16 MiB of text",
            });
        }
        out.push_str(piece);
        Ok(())
    }

    fn call(&mut self, call: &Call, scopes: usize, depth: usize) -> Result<String, ExprError> {
        if depth > MAX_DEPTH {
            return Err(ExprError::TooDeep);
        }
        self.tick()?;
        self.calls += 1;
        if self.calls > MAX_CALLS {
            return Err(ExprError::TooLarge {
                what: "evaluates more than 100000 calls",
            });
        }
        let arg = self.template(&call.arg, scopes, depth)?;
        let value = self.apply(&call.func, &arg, scopes, depth)?;
        let value = match &call.index {
            Some(index) => {
                let index = self.template(index, scopes, depth)?;
                index_into(value, &index)
            }
            None => value,
        };
        Ok(py_str(&value))
    }

    fn apply(
        &mut self,
        func: &Func,
        arg: &str,
        scopes: usize,
        depth: usize,
    ) -> Result<Value, ExprError> {
        let env = self.env;
        let not_found = |function: &'static str| ExprError::NotFound {
            function,
            key: arg.to_string(),
        };
        let steering_scopes = env.base_scopes.min(scopes);
        match func {
            Func::Lookup => self.lookup(arg, scopes, depth),
            Func::Steering => {
                let v = env
                    .job
                    .and_then(|j| present(j.steering().parameters.get(arg)))
                    .ok_or_else(|| not_found("steering"))?;
                self.found(v, steering_scopes, depth)
            }
            Func::System => {
                let v = env
                    .job
                    .and_then(|j| present(j.steering().system.get(arg)))
                    .ok_or_else(|| not_found("system"))?;
                self.found(v, steering_scopes, depth)
            }
            Func::Environ => env
                .environ
                .and_then(|lookup| lookup(arg))
                .map(Value::String)
                .ok_or_else(|| not_found("environ")),
            Func::Options => {
                let v = present(env.options.get(arg)).ok_or_else(|| not_found("options"))?;
                self.found(v, scopes, depth)
            }
            Func::Metadata => {
                let difplus = env.job.and_then(|j| j.difplus.as_ref());
                let v = difplus
                    .and_then(|d| {
                        present(d.get("dif").and_then(|x| x.get(arg)))
                            .or_else(|| present(d.get("plus").and_then(|x| x.get(arg))))
                    })
                    .ok_or_else(|| not_found("metadata"))?;
                self.found(v, scopes, depth)
            }
            Func::Eval => Ok(Value::String(arith::eval(arg)?.to_py_string())),
            Func::Choice => choice(arg, env.seed),
            Func::Sprintf => pyfmt::sprintf(arg).map(Value::String),
            Func::Sum => sum(arg),
            Func::Min => extreme(arg, "min", std::cmp::Ordering::Less),
            Func::Max => extreme(arg, "max", std::cmp::Ordering::Greater),
            Func::Len => len(arg),
            Func::Unknown(name) => Err(ExprError::UnknownFunction { name: name.clone() }),
        }
    }

    /// `$(name)`: innermost parameters first, then top-level fields, then options. A value
    /// found in a parameter scope is expanded seeing that scope and the ones outside it, as an
    /// IceProd worker expands parameters when it enters each scope.
    fn lookup(&mut self, name: &str, scopes: usize, depth: usize) -> Result<Value, ExprError> {
        let env = self.env;
        for k in (0..scopes.min(env.scopes.len())).rev() {
            if let Some(v) = present(env.scopes[k].get(name)) {
                return self.found(v, k + 1, depth);
            }
        }
        if let Some(v) = env.job.and_then(|j| top_level(j, name)) {
            return self.found(&v, scopes, depth);
        }
        if let Some(v) = present(env.options.get(name)) {
            return self.found(v, scopes, depth);
        }
        Err(ExprError::UnknownName {
            name: name.to_string(),
        })
    }

    /// A looked-up value, with the expressions in its strings expanded.
    fn found(&mut self, value: &Value, scopes: usize, depth: usize) -> Result<Value, ExprError> {
        let mut path = String::new();
        self.value(value, scopes, depth, &mut path, 0)
            .map_err(|(_, e)| e)
    }

    fn value(
        &mut self,
        value: &Value,
        scopes: usize,
        depth: usize,
        path: &mut String,
        nesting: usize,
    ) -> ValueResult {
        if nesting > MAX_VALUE_DEPTH {
            return Err((
                path.clone(),
                ExprError::TooLarge {
                    what: "goes through JSON nested too deep",
                },
            ));
        }
        match value {
            Value::String(s) => self
                .string(s, scopes, depth)
                .map(Value::String)
                .map_err(|e| (path.clone(), e)),
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    out.push(self.value(item, scopes, depth, path, nesting + 1)?);
                    path.truncate(len);
                }
                Ok(Value::Array(out))
            }
            Value::Object(map) => {
                let mut out = Map::new();
                for (k, v) in map {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                    let key = self
                        .string(k, scopes, depth)
                        .map_err(|e| (path.clone(), e))?;
                    let v = self.value(v, scopes, depth, path, nesting + 1)?;
                    path.truncate(len);
                    out.insert(key, v);
                }
                Ok(Value::Object(out))
            }
            other => Ok(other.clone()),
        }
    }

    fn string(&mut self, s: &str, scopes: usize, depth: usize) -> Result<String, ExprError> {
        if !may_hold_calls(s) {
            return Ok(s.to_string());
        }
        let ast = parse(s)?;
        self.template(&ast, scopes, depth)
    }
}

/// True if `s` holds a `$` or a `\\`, without which it is plain text. Byte searches (memchr),
/// not a walk over characters: a looked-up value may be megabytes, looked up thousands of
/// times within one expansion.
pub(crate) fn may_hold_calls(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.contains(&b'$') || bytes.contains(&b'\\')
}

/// A value that is there and not `null` (IceProd treats `None` as not found).
fn present(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| !v.is_null())
}

/// `value[index]` as IceProd does it: a list by position (negative counts from the end), an
/// object by key, a string by character; anything else keeps the text `value[index]`.
fn index_into(value: Value, index: &str) -> Value {
    let value = match value {
        Value::String(s) => match infer_type(&s) {
            v @ (Value::Array(_) | Value::Object(_)) => v,
            _ => Value::String(s),
        },
        other => other,
    };
    let position = |len: usize| -> Option<usize> {
        let i = match infer_type(index) {
            Value::Number(n) => n.as_i64()?,
            _ => return None,
        };
        let len = i64::try_from(len).ok()?;
        let i = if i < 0 { i + len } else { i };
        (0..len).contains(&i).then_some(i as usize)
    };
    let picked = match &value {
        Value::Array(items) => position(items.len()).map(|i| items[i].clone()),
        Value::Object(map) => map.get(index).cloned(),
        Value::String(s) => {
            let chars: Vec<char> = s.chars().collect();
            position(chars.len()).map(|i| Value::String(chars[i].to_string()))
        }
        _ => None,
    };
    picked.unwrap_or_else(|| Value::String(format!("{}[{index}]", py_str(&value))))
}

/// The items of a sequence argument: a JSON list, an object's keys, or (an addition to IceProd,
/// which only takes JSON lists) comma-separated values.
fn items(arg: &str) -> Option<Vec<Value>> {
    match infer_type(arg) {
        Value::Array(items) => Some(items),
        Value::Object(map) => Some(map.keys().cloned().map(Value::String).collect()),
        Value::String(s) if s.contains(',') => Some(s.split(',').map(infer_type).collect()),
        _ => None,
    }
}

fn reduce_error(function: &'static str, message: impl Into<String>) -> ExprError {
    ExprError::BadArgument {
        function,
        message: message.into(),
    }
}

fn sum(arg: &str) -> Result<Value, ExprError> {
    let items = items(arg).ok_or_else(|| reduce_error("sum", format!("`{arg}` is not a list")))?;
    let mut int_total: i64 = 0;
    let mut float_total: Option<f64> = None;
    for item in &items {
        let n = match item {
            Value::Number(n) => n,
            other => {
                return Err(reduce_error(
                    "sum",
                    format!("`{}` is not a number", py_str(other)),
                ))
            }
        };
        match (n.as_i64(), float_total) {
            (Some(i), None) => int_total = int_total.checked_add(i).ok_or(ExprError::Overflow)?,
            _ => {
                let f = n.as_f64().unwrap_or(f64::NAN);
                float_total = Some(float_total.unwrap_or(int_total as f64) + f);
            }
        }
    }
    Ok(match float_total {
        Some(f) => Value::String(pyfmt::float_repr(f)),
        None => Value::from(int_total),
    })
}

/// `$min` / `$max`: of numbers by value, of strings by text; a plain string gives its
/// smallest or largest character, as Python's `min("abc")` does.
fn extreme(
    arg: &str,
    function: &'static str,
    want: std::cmp::Ordering,
) -> Result<Value, ExprError> {
    let items = match items(arg) {
        Some(items) => items,
        None => match infer_type(arg) {
            Value::String(s) => s.chars().map(|c| Value::String(c.to_string())).collect(),
            _ => return Err(reduce_error(function, format!("`{arg}` is not a list"))),
        },
    };
    let mut best: Option<&Value> = None;
    for item in &items {
        let better = match (best, item) {
            (None, _) => true,
            (Some(Value::Number(a)), Value::Number(b)) => {
                let (a, b) = (
                    a.as_f64().unwrap_or(f64::NAN),
                    b.as_f64().unwrap_or(f64::NAN),
                );
                b.partial_cmp(&a) == Some(want)
            }
            (Some(Value::String(a)), Value::String(b)) => b.cmp(a) == want,
            (Some(a), b) => {
                return Err(reduce_error(
                    function,
                    format!("cannot compare `{}` with `{}`", py_str(a), py_str(b)),
                ))
            }
        };
        if better {
            if !matches!(item, Value::Number(_) | Value::String(_)) {
                return Err(reduce_error(
                    function,
                    format!("cannot compare `{}`", py_str(item)),
                ));
            }
            best = Some(item);
        }
    }
    best.cloned()
        .ok_or_else(|| reduce_error(function, "the list is empty"))
}

fn len(arg: &str) -> Result<Value, ExprError> {
    match infer_type(arg) {
        Value::Array(items) => Ok(Value::from(items.len())),
        Value::Object(map) => Ok(Value::from(map.len())),
        Value::String(s) => Ok(Value::from(s.chars().count())),
        other => Err(reduce_error(
            "len",
            format!("`{}` has no length", py_str(&other)),
        )),
    }
}

/// `$choice(a,b,c)` or `$choice([…])`: one choice, picked by the seed and the argument so the
/// same job gets the same answer every time.
fn choice(arg: &str, seed: u64) -> Result<Value, ExprError> {
    if arg.is_empty() {
        return Err(reduce_error("choice", "no choices"));
    }
    let options: Vec<Value> = match infer_type(arg) {
        Value::Array(items) if !items.is_empty() => items,
        _ => arg
            .split(',')
            .map(|s| Value::String(s.to_string()))
            .collect(),
    };
    let pick = splitmix64(seed ^ fnv1a(arg.as_bytes())) % options.len() as u64;
    Ok(options[pick as usize].clone())
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
