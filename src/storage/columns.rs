//! Domain values as column types, so that entities hold `OrganizationId`, `Role` or `Email`
//! rather than bare `Uuid` and `String`. The domain knows nothing of SeaORM; these impls are
//! what SeaORM's `DeriveValueType` would generate, written here for the domain's types. A
//! stored value that does not read back as its type fails the query as a storage error; a row
//! is never dropped or defaulted.

use std::sync::Arc;

use sea_orm::sea_query::{ArrayType, ColumnType, Nullable, ValueType, ValueTypeErr};
use sea_orm::{ColIdx, DbErr, QueryResult, TryFromU64, TryGetError, TryGetable, Value};
use uuid::Uuid;

use crate::domain::{
    Access, AuditAction, AuditEventId, DeliveryState, DisplayName, Email, InvitationId,
    InvitationState, OrganizationId, Role, UserId, WorkspaceId,
};

/// A stored value that is not one of its type's.
#[derive(Debug, thiserror::Error)]
#[error("stored {what} {value:?} is not valid")]
struct Corrupt {
    what: &'static str,
    value: String,
}

fn corrupt(what: &'static str, value: String) -> TryGetError {
    TryGetError::DbErr(DbErr::TryIntoErr {
        from: "String",
        into: what,
        source: Arc::new(Corrupt { what, value }),
    })
}

/// Ids stored as UUIDs.
macro_rules! uuid_column {
    ($($name:ident),*) => {$(
        impl From<$name> for Value {
            fn from(id: $name) -> Value {
                id.as_uuid().into()
            }
        }

        impl TryGetable for $name {
            fn try_get_by<I: ColIdx>(res: &QueryResult, idx: I) -> Result<Self, TryGetError> {
                Uuid::try_get_by(res, idx).map($name::from_uuid)
            }
        }

        impl ValueType for $name {
            fn try_from(v: Value) -> Result<Self, ValueTypeErr> {
                <Uuid as ValueType>::try_from(v).map($name::from_uuid)
            }
            fn type_name() -> String {
                stringify!($name).to_owned()
            }
            fn array_type() -> ArrayType {
                ArrayType::Uuid
            }
            fn column_type() -> ColumnType {
                ColumnType::Uuid
            }
        }

        impl Nullable for $name {
            fn null() -> Value {
                <Uuid as Nullable>::null()
            }
        }

        impl TryFromU64 for $name {
            fn try_from_u64(_: u64) -> Result<Self, DbErr> {
                Err(DbErr::ConvertFromU64(stringify!($name)))
            }
        }
    )*};
}

/// Values stored as text: `$read` turns the stored text into the value or `None`, `$write`
/// the value into its stored text.
macro_rules! text_column {
    ($($name:ident: $read:expr, $write:expr;)*) => {$(
        impl From<$name> for Value {
            fn from(value: $name) -> Value {
                let write: fn(&$name) -> String = $write;
                write(&value).into()
            }
        }

        impl TryGetable for $name {
            fn try_get_by<I: ColIdx>(res: &QueryResult, idx: I) -> Result<Self, TryGetError> {
                let text = String::try_get_by(res, idx)?;
                let read: fn(String) -> Result<$name, String> = $read;
                read(text).map_err(|text| corrupt(stringify!($name), text))
            }
        }

        impl ValueType for $name {
            fn try_from(v: Value) -> Result<Self, ValueTypeErr> {
                let read: fn(String) -> Result<$name, String> = $read;
                read(<String as ValueType>::try_from(v)?).map_err(|_| ValueTypeErr)
            }
            fn type_name() -> String {
                stringify!($name).to_owned()
            }
            fn array_type() -> ArrayType {
                ArrayType::String
            }
            fn column_type() -> ColumnType {
                ColumnType::Text
            }
        }

        impl Nullable for $name {
            fn null() -> Value {
                Value::String(None)
            }
        }

        impl TryFromU64 for $name {
            fn try_from_u64(_: u64) -> Result<Self, DbErr> {
                Err(DbErr::ConvertFromU64(stringify!($name)))
            }
        }
    )*};
}

uuid_column!(OrganizationId, WorkspaceId, InvitationId, AuditEventId);

text_column! {
    // Written validated; read back as written.
    UserId: |text| UserId::parse_owned(text.clone()).map_err(|_| text), |id| id.as_str().to_owned();
    Email: |text| Ok(Email::from_stored(text)), |email| email.as_str().to_owned();
    DisplayName: |text| Ok(DisplayName::from_stored(text)), |name| name.as_str().to_owned();
    Role: |text| Role::from_stored(&text).ok_or(text), |role| role.as_str().to_owned();
    Access: |text| Access::from_stored(&text).ok_or(text), |access| access.as_str().to_owned();
    InvitationState: |text| InvitationState::from_stored(&text).ok_or(text),
        |state| state.as_str().to_owned();
    DeliveryState: |text| DeliveryState::from_stored(&text).ok_or(text),
        |state| state.as_str().to_owned();
    AuditAction: |text| AuditAction::from_stored(&text).ok_or(text),
        |action| action.as_str().to_owned();
}
