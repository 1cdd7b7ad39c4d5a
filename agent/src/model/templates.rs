//! Interned `METHOD /endpoint/{id}` templates: windows count endpoint ids, names are looked
//! up only when a summary is built.

use hashbrown::HashTable;

use super::ids::{OTHER_TEMPLATE, TemplateKey, stored_template_hash};
use super::swar::short_eq;

/// Longest method token given its own template.
const MAX_METHOD_LEN: usize = 16;

pub(crate) struct Templates {
    /// Id → name; id 0 is [`OTHER_TEMPLATE`].
    names: Vec<Box<str>>,
    index: HashTable<u32>,
    max: usize,
    /// Rendering space reused by every lookup.
    scratch: Box<TemplateKey>,
    /// Requests counted under id 0.
    pub other: u64,
}

impl Templates {
    pub fn new(max: usize) -> Self {
        Self {
            names: vec![OTHER_TEMPLATE.into()],
            index: HashTable::new(),
            max: max.max(2),
            scratch: Box::new(TemplateKey::new()),
            other: 0,
        }
    }

    /// Lets the table hold `max` templates (never fewer than now).
    pub fn raise_max(&mut self, max: usize) {
        self.max = self.max.max(max);
    }

    /// Rebuilds a table from its names (snapshot restore); `names[0]` must be
    /// [`OTHER_TEMPLATE`] and names must be distinct.
    pub fn from_names(names: Vec<Box<str>>, max: usize) -> Result<Self, String> {
        if names.first().map(|n| &**n) != Some(OTHER_TEMPLATE) {
            return Err(format!("template 0 must be `{OTHER_TEMPLATE}`"));
        }
        if names.len() > max.max(2) {
            return Err(format!("{} templates, at most {max}", names.len()));
        }
        let mut index = HashTable::new();
        for (id, name) in names.iter().enumerate().skip(1) {
            let hash = stored_template_hash(name.as_bytes());
            if index
                .find(hash, |&i: &u32| names[i as usize] == *name)
                .is_some()
            {
                return Err(format!("template `{name}` listed twice"));
            }
            index.insert_unique(hash, id as u32, |&i| {
                stored_template_hash(names[i as usize].as_bytes())
            });
        }
        Ok(Self {
            names,
            index,
            max: max.max(2),
            scratch: Box::new(TemplateKey::new()),
            other: 0,
        })
    }

    /// The id of the template of `method target`, added if new.
    #[inline]
    pub fn intern(&mut self, method: &str, target: &str) -> u32 {
        if method.is_empty() || method.len() > MAX_METHOD_LEN || method.contains(' ') {
            self.other += 1;
            return 0;
        }
        let key = &mut *self.scratch;
        if !key.render_into(method, target) {
            // Longer than MAX_TEMPLATE_LEN.
            self.other += 1;
            return 0;
        }
        let hash = key.hash();
        let names = &self.names;
        if let Some(&id) = self.index.find(hash, |&i| {
            short_eq(names[i as usize].as_bytes(), key.as_bytes())
        }) {
            return id;
        }
        if self.names.len() >= self.max {
            self.other += 1;
            return 0;
        }
        let id = self.names.len() as u32;
        self.names.push(key.to_str().into());
        let names = &self.names;
        self.index.insert_unique(hash, id, |&i| {
            stored_template_hash(names[i as usize].as_bytes())
        });
        id
    }

    pub fn names(&self) -> &[Box<str>] {
        &self.names
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn heap_bytes(&self) -> usize {
        self.names.capacity() * std::mem::size_of::<Box<str>>()
            + self.names.iter().map(|n| n.len()).sum::<usize>()
            + self.index.capacity() * 5
    }
}
