//! The domain's ids as SQL text: bound and read as themselves, so a query cannot take one
//! kind of id for another, and a malformed id in a row is a decode error, not a panic.

use sqlx::any::{Any, AnyTypeInfo, AnyValueRef};
use sqlx::database::Database;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Decode, Encode, Type};

use crate::domain::ids::{ApprovalRequestId, DeliveryId, TaskId, WorkflowId};

macro_rules! text_column {
    ($($id:ty),* $(,)?) => {$(
        impl Type<Any> for $id {
            fn type_info() -> AnyTypeInfo {
                <String as Type<Any>>::type_info()
            }
        }

        impl<'q> Encode<'q, Any> for $id {
            fn encode_by_ref(
                &self,
                buf: &mut <Any as Database>::ArgumentBuffer<'q>,
            ) -> Result<IsNull, BoxDynError> {
                <String as Encode<'q, Any>>::encode(self.to_string(), buf)
            }
        }

        impl<'r> Decode<'r, Any> for $id {
            fn decode(value: AnyValueRef<'r>) -> Result<Self, BoxDynError> {
                let text = <String as Decode<'r, Any>>::decode(value)?;
                Ok(text.parse()?)
            }
        }
    )*};
}

text_column!(WorkflowId, ApprovalRequestId, DeliveryId, TaskId);
