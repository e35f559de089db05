//! Reading AuthZEN requests: the JSON shapes of the specification, checked member by member so
//! that every problem names its place (`evaluations[2].resource.id`), then mapped onto Roster's
//! checks. A request that breaks the specification's shapes is a 400 for the whole request; a
//! well-shaped evaluation that names something Roster cannot check (an unknown action, an id
//! that is not one) is an error of that evaluation alone.

use serde_json::{Map, Value};

use crate::domain::{OrganizationId, Permission, Scope, UserIdRef, WorkspaceId};
use crate::grpc::convert::at_least_as_fresh;
use crate::index::{Check, Freshness};

/// A JSON object.
pub type Object = Map<String, Value>;

/// A JSON value whose objects name each member once. A body naming one twice is refused rather
/// than read as its last: a proxy or an audit log in front may read the first, and decide or
/// record another question than the one answered.
pub struct Unique(pub Value);

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueVisitor).map(Unique)
    }
}

struct UniqueVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Unique(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Object::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("the member {key:?} appears twice")));
            }
            let Unique(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Why a request, or one evaluation of it, cannot be answered: a message for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem(pub String);

impl Problem {
    fn at(field: &str, what: &str) -> Self {
        Problem(format!("{field} {what}"))
    }
}

type Read<T> = Result<T, Problem>;

/// The member `key` of `object`, which must be an object when present.
pub fn object<'a>(object: &'a Object, key: &str, field: &str) -> Read<Option<&'a Object>> {
    match object.get(key) {
        None => Ok(None),
        Some(Value::Object(inner)) => Ok(Some(inner)),
        Some(_) => Err(Problem::at(field, "must be an object")),
    }
}

fn string<'a>(object: &'a Object, key: &str, field: &str) -> Read<Option<&'a str>> {
    match object.get(key) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(Problem::at(field, "must be a string")),
    }
}

fn required_string<'a>(object: &'a Object, key: &str, field: &str) -> Read<&'a str> {
    string(object, key, field)?.ok_or_else(|| Problem::at(field, "is required"))
}

/// Whether an entity's `id` must be there: searches leave out the id of what they look for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Id {
    Required,
    /// Left out, and ignored when present, as the specification asks.
    Ignored,
}

/// A subject or a resource: its type, its id, its properties.
#[derive(Debug, Clone, Copy)]
pub struct Entity<'a> {
    pub kind: &'a str,
    pub id: Option<&'a str>,
    pub properties: Option<&'a Object>,
}

/// Reads a subject or resource at `field`.
pub fn entity<'a>(value: &'a Object, field: &str, id: Id) -> Read<Entity<'a>> {
    let kind = required_string(value, "type", &format!("{field}.type"))?;
    let id = match id {
        Id::Required => Some(required_string(value, "id", &format!("{field}.id"))?),
        Id::Ignored => None,
    };
    let properties = object(value, "properties", &format!("{field}.properties"))?;
    Ok(Entity { kind, id, properties })
}

/// Reads an action at `field`: its name.
pub fn action<'a>(value: &'a Object, field: &str) -> Read<&'a str> {
    let name = required_string(value, "name", &format!("{field}.name"))?;
    object(value, "properties", &format!("{field}.properties"))?;
    Ok(name)
}

/// One access evaluation, its shape checked.
#[derive(Debug, Clone, Copy)]
pub struct Evaluation<'a> {
    pub subject: Entity<'a>,
    pub action: &'a str,
    pub resource: Entity<'a>,
    pub context: Option<&'a Object>,
    /// Where it sits in the request, for messages: empty, or `evaluations[3].`.
    pub place: &'a str,
}

/// The parts of an evaluation as sent, before the defaults of a boxcar fill them in.
#[derive(Debug, Clone, Copy, Default)]
pub struct Parts<'a> {
    pub subject: Option<&'a Object>,
    pub action: Option<&'a Object>,
    pub resource: Option<&'a Object>,
    pub context: Option<&'a Object>,
}

impl<'a> Parts<'a> {
    /// The four members of an evaluation object at `place` (`""` or `evaluations[3].`).
    pub fn read(value: &'a Object, place: &str) -> Read<Self> {
        Ok(Parts {
            subject: object(value, "subject", &format!("{place}subject"))?,
            action: object(value, "action", &format!("{place}action"))?,
            resource: object(value, "resource", &format!("{place}resource"))?,
            context: object(value, "context", &format!("{place}context"))?,
        })
    }

    /// These parts as the defaults of a boxcar, each present one's shape checked and named at
    /// the top level.
    pub fn checked_defaults(self) -> Read<Self> {
        if let Some(subject) = self.subject {
            entity(subject, "subject", Id::Required)?;
        }
        if let Some(value) = self.action {
            action(value, "action")?;
        }
        if let Some(resource) = self.resource {
            entity(resource, "resource", Id::Required)?;
        }
        Ok(self)
    }

    /// These parts, each missing one taken from `defaults` (the top level of a boxcar); the
    /// whole evaluation is then checked, each member named at `place`.
    pub fn over(self, defaults: Parts<'a>, place: &'a str) -> Read<Evaluation<'a>> {
        let missing = |name: &str| {
            let at = if place.is_empty() { "" } else { ", here or at the top level" };
            Problem(format!("{place}{name} is required{at}"))
        };
        // Each member is taken from the evaluation, else the defaults, and checked before the
        // next, so that the first problem named is the first member's.
        let pick =
            |own: Option<&'a Object>, default: Option<&'a Object>, name: &str| match (own, default)
            {
                (Some(own), _) => Ok((own, format!("{place}{name}"))),
                (None, Some(default)) => Ok((default, name.to_owned())),
                (None, None) => Err(missing(name)),
            };
        let (subject, at) = pick(self.subject, defaults.subject, "subject")?;
        let subject = entity(subject, &at, Id::Required)?;
        let (action_value, at) = pick(self.action, defaults.action, "action")?;
        let action = action(action_value, &at)?;
        let (resource, at) = pick(self.resource, defaults.resource, "resource")?;
        let resource = entity(resource, &at, Id::Required)?;
        Ok(Evaluation {
            subject,
            action,
            resource,
            context: self.context.or(defaults.context),
            place,
        })
    }
}

/// The subject types Roster knows.
pub const USER: &str = "user";
/// The resource types Roster knows.
pub const WORKSPACE: &str = "workspace";
/// See [`WORKSPACE`].
pub const ORGANIZATION: &str = "organization";

/// The user a subject names.
pub fn user<'a>(subject: &Entity<'a>, field: &str) -> Read<Option<UserIdRef<'a>>> {
    if subject.kind != USER {
        return Err(Problem::at(&format!("{field}.type"), "must be \"user\""));
    }
    subject
        .id
        .map(|id| UserIdRef::parse(id).map_err(|e| Problem::at(&format!("{field}.id"), e.0)))
        .transpose()
}

/// What a resource names: an organization, or a workspace of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub organization_id: OrganizationId,
    pub workspace_id: Option<WorkspaceId>,
}

/// The organization a workspace resource belongs to, from its properties.
pub fn organization_of(resource: &Entity<'_>, field: &str) -> Read<OrganizationId> {
    let field = format!("{field}.properties.organization_id");
    let Some(properties) = resource.properties else {
        return Err(Problem::at(&field, "is required for a workspace"));
    };
    let text = required_string(properties, "organization_id", &field)
        .map_err(|_| Problem::at(&field, "is required for a workspace, as a string"))?;
    OrganizationId::parse(text).map_err(|e| Problem::at(&field, e.0))
}

/// The organization or workspace a resource with an id names.
pub fn target(resource: &Entity<'_>, field: &str) -> Read<Target> {
    let id = resource.id.unwrap_or_default();
    let id_field = format!("{field}.id");
    match resource.kind {
        WORKSPACE => {
            let workspace_id = WorkspaceId::parse(id).map_err(|e| Problem::at(&id_field, e.0))?;
            Ok(Target {
                organization_id: organization_of(resource, field)?,
                workspace_id: Some(workspace_id),
            })
        }
        ORGANIZATION => Ok(Target {
            organization_id: OrganizationId::parse(id).map_err(|e| Problem::at(&id_field, e.0))?,
            workspace_id: None,
        }),
        _ => {
            Err(Problem::at(&format!("{field}.type"), "must be \"workspace\" or \"organization\""))
        }
    }
}

/// The permission an action names, which must suit the resource's kind.
pub fn permission(name: &str, field: &str, workspace: bool) -> Read<Permission> {
    let field = format!("{field}.name");
    let Some(permission) = Permission::from_name(name) else {
        return Err(Problem::at(
            &field,
            "is not in Roster's permission catalogue, such as sources.read; the action search lists a user's",
        ));
    };
    match (permission.scope(), workspace) {
        (Scope::Workspace, false) => {
            Err(Problem::at(&field, "is a workspace permission: the resource must be a workspace"))
        }
        (Scope::Organization, true) => Err(Problem::at(
            &field,
            "is an organization permission: the resource must be an organization",
        )),
        _ => Ok(permission),
    }
}

/// How fresh the answer must be: `context.consistency_token`, a token of a TeamService change
/// of the checked organization, asks for a state that includes that change.
pub fn freshness(context: Option<&Object>, field: &str, org: OrganizationId) -> Read<Freshness> {
    let field = format!("{field}.consistency_token");
    let Some(token) =
        context.map(|c| string(c, "consistency_token", &field)).transpose()?.flatten()
    else {
        return Ok(Freshness::MinimizeLatency);
    };
    let requirement = at_least_as_fresh(token).map_err(|what| Problem::at(&field, what))?;
    match requirement.organization {
        Some(named) if named != org => {
            Err(Problem::at(&field, "names a change of another organization than the resource's"))
        }
        _ => Ok(requirement.freshness),
    }
}

impl<'a> Evaluation<'a> {
    /// The Roster check this evaluation asks for.
    pub fn check(&self) -> Read<Check<'a>> {
        let place = self.place;
        let user = user(&self.subject, &format!("{place}subject"))?;
        let target = target(&self.resource, &format!("{place}resource"))?;
        let permission =
            permission(self.action, &format!("{place}action"), target.workspace_id.is_some())?;
        let freshness =
            freshness(self.context, &format!("{place}context"), target.organization_id)?;
        Ok(Check {
            // The id is required by the shape, so a user is always there.
            user_id: user.ok_or_else(|| Problem(format!("{place}subject.id is required")))?,
            organization_id: target.organization_id,
            workspace_id: target.workspace_id,
            permission,
            freshness,
        })
    }
}

/// How a boxcar of evaluations is run (`options.evaluations_semantic`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Semantic {
    /// Every evaluation, every result.
    ExecuteAll,
    /// Up to and including the first denial (or failure).
    DenyOnFirstDeny,
    /// Up to and including the first permit.
    PermitOnFirstPermit,
}

/// Reads `options.evaluations_semantic`.
pub fn semantic(body: &Object) -> Read<Semantic> {
    let Some(options) = object(body, "options", "options")? else {
        return Ok(Semantic::ExecuteAll);
    };
    match string(options, "evaluations_semantic", "options.evaluations_semantic")? {
        None | Some("execute_all") => Ok(Semantic::ExecuteAll),
        Some("deny_on_first_deny") => Ok(Semantic::DenyOnFirstDeny),
        Some("permit_on_first_permit") => Ok(Semantic::PermitOnFirstPermit),
        Some(_) => Err(Problem(
            "options.evaluations_semantic must be execute_all, deny_on_first_deny or permit_on_first_permit"
                .to_owned(),
        )),
    }
}

/// A search's `page`: the token of the previous page and the most results wanted.
#[derive(Debug, Clone, Copy, Default)]
pub struct PageAsked<'a> {
    pub token: &'a str,
    /// `None` when not given: the default on a first page, the first page's on later ones.
    pub limit: Option<u64>,
}

/// Reads a search's `page`.
pub fn page(body: &Object) -> Read<PageAsked<'_>> {
    use crate::service::page::MAX_PAGE_SIZE;
    let Some(page) = object(body, "page", "page")? else {
        return Ok(PageAsked::default());
    };
    let token = string(page, "token", "page.token")?.unwrap_or_default();
    let limit = match page.get("limit") {
        None => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(n) if n <= MAX_PAGE_SIZE => Some(n),
            Some(_) => return Err(Problem(format!("page.limit must be at most {MAX_PAGE_SIZE}"))),
            None => return Err(Problem("page.limit must be a non-negative integer".to_owned())),
        },
        Some(_) => return Err(Problem("page.limit must be a non-negative integer".to_owned())),
    };
    object(page, "properties", "page.properties")?;
    Ok(PageAsked { token, limit })
}

/// The consistency token of a context as sent, for binding page tokens to it.
pub fn consistency_text(context: Option<&Object>) -> &str {
    context.and_then(|c| c.get("consistency_token")).and_then(Value::as_str).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(value: Value) -> Object {
        match value {
            Value::Object(map) => map,
            _ => unreachable!("a test literal"),
        }
    }

    #[test]
    fn defaults_fill_what_an_evaluation_leaves_out_and_its_own_members_win() {
        let top = obj(json!({
            "subject": {"type": "user", "id": "alice"},
            "action": {"name": "sources.read"},
            "context": {"a": 1},
        }));
        let item = obj(json!({
            "action": {"name": "sources.create"},
            "resource": {"type": "workspace", "id": "w"},
        }));
        let defaults = Parts::read(&top, "").unwrap();
        let evaluation = Parts::read(&item, "evaluations[0].")
            .unwrap()
            .over(defaults, "evaluations[0].")
            .unwrap();
        assert_eq!(evaluation.subject.id, Some("alice"));
        assert_eq!(evaluation.action, "sources.create");
        assert_eq!(evaluation.resource.kind, "workspace");
        assert_eq!(evaluation.context.unwrap().get("a"), Some(&json!(1)));
        let bare = obj(json!({"action": {"name": "x"}}));
        let err = Parts::read(&bare, "evaluations[1].")
            .unwrap()
            .over(Parts::default(), "evaluations[1].")
            .unwrap_err();
        assert_eq!(err.0, "evaluations[1].subject is required, here or at the top level");
    }

    #[test]
    fn each_wrongly_typed_member_is_named() {
        for (body, expected) in [
            (json!({"subject": "alice"}), "subject must be an object"),
            (json!({"subject": {"id": "a"}}), "subject.type is required"),
            (json!({"subject": {"type": 1, "id": "a"}}), "subject.type must be a string"),
            (json!({"subject": {"type": "user", "id": 7}}), "subject.id must be a string"),
            (
                json!({"subject": {"type": "user", "id": "a", "properties": []}}),
                "subject.properties must be an object",
            ),
        ] {
            let body = obj(body);
            let parts = Parts::read(&body, "");
            let err = parts
                .and_then(|p| {
                    let defaults = Parts {
                        action: Some(Box::leak(Box::new(obj(json!({"name": "x"}))))),
                        resource: Some(Box::leak(Box::new(obj(json!({"type": "t", "id": "i"}))))),
                        ..Parts::default()
                    };
                    p.over(defaults, "")
                })
                .unwrap_err();
            assert_eq!(err.0, expected);
        }
    }

    #[test]
    fn a_member_named_twice_is_refused_at_any_depth() {
        let read = |text: &str| serde_json::from_str::<Unique>(text).map(|u| u.0);
        assert_eq!(
            read(r#"{"a": [1, {"b": true}], "c": null}"#).unwrap(),
            json!({"a": [1, {"b": true}], "c": null})
        );
        for text in [
            r#"{"a": 1, "a": 2}"#,
            r#"{"x": [{"b": 1, "b": 1}]}"#,
            r#"{"s": {"id": "u", "id": "v"}}"#,
        ] {
            let err = read(text).unwrap_err().to_string();
            assert!(err.contains("appears twice"), "{text}: {err}");
        }
    }

    #[test]
    fn a_page_limit_must_be_a_small_non_negative_integer() {
        assert_eq!(page(&obj(json!({"page": {"limit": 5}}))).unwrap().limit, Some(5));
        assert_eq!(page(&obj(json!({"page": {}}))).unwrap().limit, None);
        for bad in [json!(-1), json!(2.5), json!("5"), json!(1001)] {
            assert!(page(&obj(json!({"page": {"limit": bad}}))).is_err(), "{bad}");
        }
    }
}
