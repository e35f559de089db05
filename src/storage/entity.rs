//! SeaORM entities, one module per table, with the domain's ids and values as column types (see
//! `columns`). Relations are expressed as queries in the repository rather than on the models,
//! because every query here is scoped by organization explicitly.

/// `organizations`
pub mod organization {
    use sea_orm::entity::prelude::*;

    use crate::domain::{DisplayName, OrganizationId};

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "organizations")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: OrganizationId,
        pub display_name: DisplayName,
        pub invitation_ttl_secs: i64,
        pub create_time: i64,
        pub update_time: i64,
        /// The revision of the organization's latest change (see `storage::changelog`).
        pub revision: i64,
        /// The longest a grant may last, in seconds; `None`: no bound.
        pub max_grant_secs: Option<i64>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// `members`
pub mod member {
    use sea_orm::entity::prelude::*;

    use crate::domain::{Email, OrganizationId, Role, UserId};

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "members")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub organization_id: OrganizationId,
        #[sea_orm(primary_key, auto_increment = false)]
        pub user_id: UserId,
        pub email: Email,
        pub role: Role,
        pub create_time: i64,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// `workspaces`
pub mod workspace {
    use sea_orm::entity::prelude::*;

    use crate::domain::{DisplayName, OrganizationId, WorkspaceId};

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "workspaces")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: WorkspaceId,
        pub organization_id: OrganizationId,
        pub display_name: DisplayName,
        pub create_time: i64,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// `workspace_grants`
pub mod workspace_grant {
    use sea_orm::entity::prelude::*;

    use crate::domain::{Access, OrganizationId, UserId, WorkspaceId};

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "workspace_grants")]
    pub struct Model {
        pub organization_id: OrganizationId,
        #[sea_orm(primary_key, auto_increment = false)]
        pub workspace_id: WorkspaceId,
        #[sea_orm(primary_key, auto_increment = false)]
        pub user_id: UserId,
        pub access: Access,
        /// When the grant ends (microseconds since the epoch); `None`: it is permanent.
        pub expire_time: Option<i64>,
        /// Why a grant that ends was given.
        pub reason: Option<String>,
        /// Whether the end has been recorded as a change (the row stays after its end).
        pub end_recorded: bool,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// `invitations`
pub mod invitation {
    use sea_orm::entity::prelude::*;

    use crate::domain::{
        DeliveryState, Email, InvitationId, InvitationState, OrganizationId, Role, UserId,
    };

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "invitations")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: InvitationId,
        pub organization_id: OrganizationId,
        pub email: Email,
        pub role: Role,
        pub state: InvitationState,
        pub token_hash: String,
        pub inviter_user_id: UserId,
        pub create_time: i64,
        pub expire_time: i64,
        pub send_count: i32,
        pub delivery_state: DeliveryState,
        pub last_delivery_error: Option<String>,
        pub update_time: i64,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// `invitation_grants`
pub mod invitation_grant {
    use sea_orm::entity::prelude::*;

    use crate::domain::{Access, InvitationId, OrganizationId, WorkspaceId};

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "invitation_grants")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub invitation_id: InvitationId,
        pub organization_id: OrganizationId,
        #[sea_orm(primary_key, auto_increment = false)]
        pub workspace_id: WorkspaceId,
        pub access: Access,
        /// When the grant ends once applied; `None`: it is permanent.
        pub expire_time: Option<i64>,
        /// Why a grant that ends is offered.
        pub reason: Option<String>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// `outbox`: which send of which invitation is due when. No row holds a body or a token: the
/// worker renders the email, with a token minted at that moment, when it sends.
pub mod outbox {
    use sea_orm::entity::prelude::*;

    use crate::domain::{DeliveryState, Email, InvitationId};

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "outbox")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub invitation_id: InvitationId,
        pub send_number: i32,
        pub recipient: Email,
        /// Unused, always empty: kept with the bodies until a later release drops them.
        pub subject: String,
        /// Always NULL since the bodies held tokens; only a process of the previous release,
        /// during a rollout, still writes one, and the worker erases it when it claims the row.
        pub body_text: Option<String>,
        /// As `body_text`.
        pub body_html: Option<String>,
        pub state: DeliveryState,
        pub attempts: i32,
        pub next_attempt_time: i64,
        pub last_error: Option<String>,
        pub create_time: i64,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// `audit_events`
pub mod audit_event {
    use sea_orm::entity::prelude::*;

    use crate::domain::{AuditAction, AuditEventId, OrganizationId};

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "audit_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: AuditEventId,
        pub organization_id: OrganizationId,
        /// Empty when no user acted.
        pub actor_user_id: String,
        pub action: AuditAction,
        pub target: String,
        pub details: String,
        pub create_time: i64,
    }

    impl ActiveModelBehavior for ActiveModel {}
}
