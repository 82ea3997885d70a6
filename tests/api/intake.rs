//! The store's batched writes on their own, on the backend under test: an intake batch with
//! every kind of row it can meet, and a claim that fills several worker slots at once.

use sym_circleci_approver::domain::ids::{DeliveryId, LeaseToken, TaskId, WorkflowId};
use sym_circleci_approver::domain::task::{DeliveryStatus, NewTask, TaskAction};
use sym_circleci_approver::store::{NewDelivery, Recorded, Store, StoreOptions};
use uuid::Uuid;

use crate::harness::*;

fn delivery(webhook_id: &str, event_id: &str, event_type: &str, workflow: Uuid) -> NewDelivery {
    let body = event_of_type(event_id, event_type, &workflow.to_string());
    let event = sym_circleci_approver::inbound::sym_event::parse(&body).unwrap();
    let task = (event_type == "approve").then(|| NewTask {
        action: TaskAction::Approve,
        workflow_id: WorkflowId(workflow),
        hold_job_name: HOLD.to_owned(),
        deadline_at: 9_999_999_999_999,
    });
    NewDelivery {
        webhook_id: webhook_id.to_owned(),
        event,
        received_at: 1_000,
        task,
        binding: None,
    }
}

/// A store of its own on the backend under test (the database lives as long as the first).
/// One approve delivery for `workflow` stored, and its task claimed under a lease of 60 s.
async fn one_claimed_approval(store: &Store, workflow: Uuid) -> (DeliveryId, TaskId, LeaseToken) {
    let stored = store
        .record_batch(&[delivery("msg_1", "ev-1", "approve", workflow)])
        .await
        .unwrap();
    let Recorded::Queued {
        delivery_id,
        task_id,
    } = stored[0]
    else {
        panic!("{stored:?}")
    };
    let lease = LeaseToken::new("test");
    let claimed = store
        .claim_due_tasks(&lease, std::time::Duration::from_secs(60), 1)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    (delivery_id, task_id, lease)
}

async fn store() -> (TestDatabase, Store) {
    let db = TestDatabase::new().await;
    let store = Store::connect(&db.url.clone().into(), &StoreOptions::default())
        .await
        .unwrap();
    (db, store)
}

/// The worker's step writes on `store`, and the size of each batch they commit.
fn step_writes_recording_batches(
    store: &Store,
) -> (
    sym_circleci_approver::store::StepWrites,
    std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
) {
    use std::sync::{Arc, Mutex};
    use sym_circleci_approver::store::{BatchOptions, StepWrites};
    let batches = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&batches);
    let writes = StepWrites::start(
        store.clone(),
        BatchOptions::default(),
        Arc::new(move |size, _| seen.lock().unwrap().push(size)),
    );
    (writes, batches)
}

#[tokio::test]
async fn one_batch_stores_new_ones_attaches_other_approvals_and_counts_repeats_on_their_originals()
{
    let (_db, store) = store().await;
    let (w1, w2, w3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    // Stored before the batch: an approval of w3's hold job.
    let earlier = store
        .record_batch(&[delivery("msg_0", "ev-0", "approve", w3)])
        .await
        .unwrap();
    let Recorded::Queued {
        delivery_id: earlier_id,
        ..
    } = earlier[0]
    else {
        panic!("{earlier:?}")
    };

    let batch = [
        delivery("msg_1", "ev-1", "approve", w1),  // new
        delivery("msg_2", "ev-1", "approve", w1),  // same Sym event as the first
        delivery("msg_1", "ev-3", "approve", w2),  // same webhook-id as the first
        delivery("msg_4", "ev-4", "approve", w1),  // another event for w1's live approval
        delivery("msg_5", "ev-5", "approve", w3),  // w3's approval was stored before
        delivery("msg_6", "ev-6", "escalate", w2), // recorded, nothing to do
        delivery("msg_7", "ev-7", "approve", w2),  // new
    ];
    let results = store.record_batch(&batch).await.unwrap();

    let Recorded::Queued {
        delivery_id: first, ..
    } = results[0]
    else {
        panic!("{results:?}")
    };
    assert_eq!(results[1], Recorded::Duplicate { original_id: first });
    assert_eq!(results[2], Recorded::Duplicate { original_id: first });
    assert_eq!(results[3], Recorded::Duplicate { original_id: first });
    assert_eq!(
        results[4],
        Recorded::Duplicate {
            original_id: earlier_id
        }
    );
    assert!(
        matches!(results[5], Recorded::Ignored { .. }),
        "{results:?}"
    );
    assert!(matches!(results[6], Recorded::Queued { .. }), "{results:?}");

    // Rows: the originals, and the other approvals attached to the live ones (kept, so a
    // failed task can hand its hold job to them); the repeats are counted on their originals.
    assert_eq!(
        store
            .delivery_count(DeliveryStatus::Attached)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store.delivery_count(DeliveryStatus::Queued).await.unwrap(),
        3
    );
    assert_eq!(
        store.delivery_count(DeliveryStatus::Ignored).await.unwrap(),
        1
    );
    assert_eq!(
        store
            .delivery_count(DeliveryStatus::Duplicate)
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.redeliveries(first).await.unwrap(), 2);
    assert_eq!(store.redeliveries(earlier_id).await.unwrap(), 0);
    for result in &results {
        if let Recorded::Queued {
            delivery_id,
            task_id,
        } = result
        {
            assert_eq!(
                store.task_for_delivery(*delivery_id).await.unwrap(),
                Some(*task_id)
            );
        }
    }
}

#[tokio::test]
async fn one_claim_fills_the_free_slots_with_at_most_one_task_per_workflow() {
    use sym_circleci_approver::domain::ids::LeaseToken;

    let (_db, store) = store().await;
    let (w1, w2) = (Uuid::new_v4(), Uuid::new_v4());
    // Two hold jobs of w1 (two tasks of one workflow), one of w2.
    let mut second_hold = delivery("msg_2", "ev-2", "approve", w1);
    if let Some(task) = &mut second_hold.task {
        task.hold_job_name = "second_approval".to_owned();
    }
    let stored = store
        .record_batch(&[
            delivery("msg_1", "ev-1", "approve", w1),
            second_hold,
            delivery("msg_3", "ev-3", "approve", w2),
        ])
        .await
        .unwrap();
    assert!(
        stored.iter().all(|r| matches!(r, Recorded::Queued { .. })),
        "{stored:?}"
    );

    let lease = LeaseToken::new("test");
    let lease_for = std::time::Duration::from_secs(60);
    let claimed = store.claim_due_tasks(&lease, lease_for, 10).await.unwrap();
    let mut workflows: Vec<_> = claimed.iter().map(|t| t.workflow_id.0).collect();
    workflows.sort();
    let mut expected = vec![w1, w2];
    expected.sort();
    assert_eq!(workflows, expected, "one task per workflow: {claimed:?}");

    // w1's other task waits while its first is leased.
    let again = store
        .claim_due_tasks(&LeaseToken::new("test"), lease_for, 10)
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

#[tokio::test]
async fn the_noted_call_is_the_row_its_answer_lands_on_even_beside_a_read_without_one() {
    use std::time::Duration;
    use sym_circleci_approver::domain::settle::Settlement;
    use sym_circleci_approver::domain::task::{Outcome, TaskStatus};
    use sym_circleci_approver::domain::upstream::{CallRecord, Operation};
    use sym_circleci_approver::store::{CallNote, StepResult};

    let (_db, store) = store().await;
    let workflow = Uuid::new_v4();
    let (delivery_id, task_id, lease) = one_claimed_approval(&store, workflow).await;
    let read = |operation, status: Option<u16>, error: Option<&str>| CallRecord {
        started_at: 1_000,
        operation,
        method: "GET",
        endpoint: format!("/workflow/{workflow}"),
        status,
        duration: Duration::from_millis(3),
        error: error.map(str::to_owned),
    };
    // The step's reads so far: one answered, one cut off with no answer at all.
    let reads = [
        read(Operation::ListJobs, Some(200), None),
        read(Operation::GetWorkflow, None, Some("timed out after 10s")),
    ];
    let endpoint = format!("/workflow/{workflow}/approve/job-1");
    let noted = store
        .prepare_call(&CallNote {
            task: task_id,
            lease: lease.clone(),
            lease_for: Duration::from_secs(60),
            reads: reads.to_vec(),
            operation: Operation::Approve,
            method: "POST",
            endpoint: endpoint.clone(),
        })
        .await
        .unwrap()
        .expect("the lease is held");
    let answer = CallRecord {
        operation: Operation::Approve,
        method: "POST",
        endpoint: endpoint.clone(),
        status: Some(202),
        ..read(Operation::Approve, Some(202), None)
    };
    let kept = store
        .settle_steps(&[StepResult {
            task: task_id,
            delivery: delivery_id,
            lease: lease.clone(),
            calls: Vec::new(),
            completed: Some((noted, answer)),
            replaces: None,
            withdrawn: Vec::new(),
            job: Default::default(),
            settle: Settlement::Finish {
                status: TaskStatus::Succeeded,
                outcome: Outcome::Approved,
                detail: "approved".into(),
            },
            successor: None,
        }])
        .await
        .unwrap();
    assert_eq!(kept, vec![true]);

    let story = store
        .audit_get(&delivery_id.to_string())
        .await
        .unwrap()
        .unwrap();
    let trail: Vec<_> = story
        .attempts
        .iter()
        .map(|a| (a.method.as_str(), a.status, a.error.as_deref()))
        .collect();
    assert_eq!(
        trail,
        vec![
            ("GET", Some(200), None),
            ("GET", None, Some("timed out after 10s")),
            ("POST", Some(202), None),
        ]
    );
}

/// A call made under a note noted before the step's reads (the intake's, docs/writes.md) is
/// stored in the note's place, after the reads; a result written twice (its first commit
/// landed though its writer was told otherwise) stores the call once, and its reads again
/// only as they always were.
#[tokio::test]
async fn a_call_that_replaces_its_note_is_stored_once_even_when_its_result_is_written_twice() {
    use std::time::Duration;
    use sym_circleci_approver::domain::settle::Settlement;
    use sym_circleci_approver::domain::task::{Outcome, TaskStatus};
    use sym_circleci_approver::domain::upstream::{CallRecord, Operation};
    use sym_circleci_approver::store::{CallNote, StepResult};

    let (_db, store) = store().await;
    let workflow = Uuid::new_v4();
    let (delivery_id, task_id, lease) = one_claimed_approval(&store, workflow).await;
    // The note, before any read.
    let note = store
        .prepare_call(&CallNote {
            task: task_id,
            lease: lease.clone(),
            lease_for: Duration::from_secs(60),
            reads: Vec::new(),
            operation: Operation::Approve,
            method: "POST",
            endpoint: format!("/workflow/{workflow}/approve/{{approval_request_id}}"),
        })
        .await
        .unwrap()
        .expect("the lease is held");
    let read = CallRecord {
        started_at: 1_000,
        operation: Operation::ListJobs,
        method: "GET",
        endpoint: format!("/workflow/{workflow}/job"),
        status: Some(200),
        duration: Duration::from_millis(3),
        error: None,
    };
    let approve = CallRecord {
        started_at: 1_005,
        operation: Operation::Approve,
        method: "POST",
        endpoint: format!("/workflow/{workflow}/approve/job-1"),
        status: Some(202),
        ..read.clone()
    };
    let result = StepResult {
        task: task_id,
        delivery: delivery_id,
        lease: lease.clone(),
        calls: vec![read],
        completed: None,
        replaces: Some((note, approve)),
        withdrawn: Vec::new(),
        job: Default::default(),
        settle: Settlement::Finish {
            status: TaskStatus::Succeeded,
            outcome: Outcome::Approved,
            detail: "approved".into(),
        },
        successor: None,
    };
    assert_eq!(
        store
            .settle_steps(std::slice::from_ref(&result))
            .await
            .unwrap(),
        vec![true]
    );
    assert_eq!(
        store
            .settle_steps(std::slice::from_ref(&result))
            .await
            .unwrap(),
        vec![false],
        "the second write finds the lease gone"
    );

    let story = store
        .audit_get(&delivery_id.to_string())
        .await
        .unwrap()
        .unwrap();
    let posts: Vec<_> = story
        .attempts
        .iter()
        .filter(|a| a.method == "POST")
        .map(|a| (a.endpoint.clone(), a.status))
        .collect();
    assert_eq!(
        posts,
        vec![(format!("/workflow/{workflow}/approve/job-1"), Some(202))],
        "{:?}",
        story.attempts
    );
    assert_eq!(
        story.attempts.last().map(|a| a.method.as_str()),
        Some("POST"),
        "the call after its read"
    );
}

/// The worker's notes and results of concurrent steps share one commit on SQLite (one writer
/// each on PostgreSQL); each keeps its own lease guard: the step that lost its lease gets
/// nothing written and is told so, beside a step whose note and result land.
#[tokio::test]
async fn steps_sharing_a_commit_keep_their_own_lease_guards() {
    use std::time::Duration;
    use sym_circleci_approver::domain::ids::LeaseToken;
    use sym_circleci_approver::domain::settle::Settlement;
    use sym_circleci_approver::domain::task::{Outcome, TaskStatus};
    use sym_circleci_approver::domain::upstream::{CallRecord, Operation};
    use sym_circleci_approver::store::{CallNote, StepResult};

    let (_db, store) = store().await;
    let (w1, w2, w3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let stored = store
        .record_batch(&[
            delivery("msg_1", "ev-1", "approve", w1),
            delivery("msg_2", "ev-2", "approve", w2),
            delivery("msg_3", "ev-3", "approve", w3),
        ])
        .await
        .unwrap();
    let queued: Vec<_> = stored
        .iter()
        .map(|r| match r {
            Recorded::Queued {
                delivery_id,
                task_id,
            } => (*delivery_id, *task_id),
            other => panic!("{other:?}"),
        })
        .collect();
    let lease = LeaseToken::new("test");
    let claimed = store
        .claim_due_tasks(&lease, Duration::from_secs(60), 3)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    let (writes, batches) = step_writes_recording_batches(&store);
    let note = |task, lease: &LeaseToken, workflow: Uuid| CallNote {
        task,
        lease: lease.clone(),
        lease_for: Duration::from_secs(60),
        reads: vec![CallRecord {
            started_at: 1_000,
            operation: Operation::ListJobs,
            method: "GET",
            endpoint: format!("/workflow/{workflow}/job"),
            status: Some(200),
            duration: Duration::from_millis(3),
            error: None,
        }],
        operation: Operation::Approve,
        method: "POST",
        endpoint: format!("/workflow/{workflow}/approve/job-1"),
    };
    // The second step's lease went elsewhere: its token no longer names the holder.
    let stale = LeaseToken::new("lost");
    let (held, lost) = tokio::join!(
        writes.prepare_call(note(queued[0].1, &lease, w1)),
        writes.prepare_call(note(queued[1].1, &stale, w2)),
    );
    let noted = held.unwrap().expect("the lease is held");
    assert_eq!(lost.unwrap(), None, "a lost lease notes nothing");

    let result = |task, delivery, lease: &LeaseToken, completed| StepResult {
        task,
        delivery,
        lease: lease.clone(),
        calls: Vec::new(),
        completed,
        replaces: None,
        withdrawn: Vec::new(),
        job: Default::default(),
        settle: Settlement::Finish {
            status: TaskStatus::Succeeded,
            outcome: Outcome::Approved,
            detail: "approved".into(),
        },
        successor: None,
    };
    let answer = CallRecord {
        started_at: 1_010,
        operation: Operation::Approve,
        method: "POST",
        endpoint: format!("/workflow/{w1}/approve/job-1"),
        status: Some(202),
        duration: Duration::from_millis(4),
        error: None,
    };
    let (kept, refused) = tokio::join!(
        writes.settle(result(
            queued[0].1,
            queued[0].0,
            &lease,
            Some((noted, answer))
        )),
        writes.settle(result(queued[1].1, queued[1].0, &stale, None)),
    );
    assert!(kept.unwrap(), "the held lease takes its result");
    assert!(!refused.unwrap(), "a lost lease changes no task");

    let trail = |delivery: sym_circleci_approver::domain::ids::DeliveryId| {
        let store = store.clone();
        async move {
            let story = store
                .audit_get(&delivery.to_string())
                .await
                .unwrap()
                .unwrap();
            (
                story.status,
                story
                    .attempts
                    .iter()
                    .map(|a| (a.method.clone(), a.status))
                    .collect::<Vec<_>>(),
            )
        }
    };
    let (status, calls) = trail(queued[0].0).await;
    assert_eq!(status, "succeeded");
    let state = store.task_state(queued[0].1).await.unwrap().unwrap();
    assert_eq!(
        (state.attempts, state.outcome),
        (1, Some(Outcome::Approved))
    );
    assert_eq!(
        calls,
        vec![
            ("GET".to_owned(), Some(200)),
            ("POST".to_owned(), Some(202))
        ]
    );
    let (status, calls) = trail(queued[1].0).await;
    assert_eq!(status, "pending", "untouched");
    assert!(
        calls.is_empty(),
        "nothing written for the lost lease: {calls:?}"
    );
    if store.backend() == sym_circleci_approver::store::Backend::Sqlite {
        // One test thread: both writes of each pair were queued before the writer ran.
        assert_eq!(*batches.lock().unwrap(), vec![2, 2]);
    }
}

/// A step whose lease ran out can still be storing its writes when the task was claimed
/// again: in one shared batch, each write is taken or refused by its own lease, never by
/// its task alone. A lease that ran out refuses a note even to its holder.
#[tokio::test]
async fn a_stale_steps_writes_beside_the_current_ones_for_the_same_task_are_refused() {
    use std::time::Duration;
    use sym_circleci_approver::domain::ids::LeaseToken;
    use sym_circleci_approver::domain::settle::Settlement;
    use sym_circleci_approver::domain::task::{Outcome, TaskStatus};
    use sym_circleci_approver::domain::upstream::{CallRecord, Operation};
    use sym_circleci_approver::store::{CallNote, StepResult};

    let (_db, store) = store().await;
    let (w1, w2) = (Uuid::new_v4(), Uuid::new_v4());
    let stored = store
        .record_batch(&[
            delivery("msg_1", "ev-1", "approve", w1),
            delivery("msg_2", "ev-2", "approve", w2),
        ])
        .await
        .unwrap();
    let delivery_of = |task| {
        stored
            .iter()
            .find_map(|r| match r {
                Recorded::Queued {
                    delivery_id,
                    task_id,
                } if *task_id == task => Some(*delivery_id),
                _ => None,
            })
            .unwrap()
    };
    // Both leased by a step whose lease runs out at once.
    let stale = LeaseToken::new("stale");
    let first = store
        .claim_due_tasks(&stale, Duration::ZERO, 2)
        .await
        .unwrap();
    assert_eq!(first.len(), 2);
    // One of them is taken again, once the clock has moved past the lease.
    let current = LeaseToken::new("current");
    let mut retaken = Vec::new();
    for _ in 0..200 {
        retaken = store
            .claim_due_tasks(&current, Duration::from_secs(60), 1)
            .await
            .unwrap();
        if !retaken.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let taken = retaken
        .first()
        .expect("an expired lease is claimed again")
        .id;
    let expired = first.iter().map(|t| t.id).find(|id| *id != taken).unwrap();

    let (writes, batches) = step_writes_recording_batches(&store);
    let note = |task, lease: &LeaseToken| CallNote {
        task,
        lease: lease.clone(),
        lease_for: Duration::from_secs(60),
        reads: Vec::new(),
        operation: Operation::Approve,
        method: "POST",
        endpoint: format!("/workflow/{task}/approve/job-1"),
    };
    let (old, new, ran_out) = tokio::join!(
        writes.prepare_call(note(taken, &stale)),
        writes.prepare_call(note(taken, &current)),
        writes.prepare_call(note(expired, &stale)),
    );
    assert_eq!(old.unwrap(), None, "the stale step notes nothing");
    let noted = new.unwrap().expect("the current lease notes its call");
    assert_eq!(ran_out.unwrap(), None, "a lease that ran out notes nothing");

    let result = |lease: &LeaseToken, completed| StepResult {
        task: taken,
        delivery: delivery_of(taken),
        lease: lease.clone(),
        calls: Vec::new(),
        completed,
        replaces: None,
        withdrawn: Vec::new(),
        job: Default::default(),
        settle: Settlement::Finish {
            status: TaskStatus::Failed,
            outcome: Outcome::HoldJobFailed,
            detail: "the stale step's view".into(),
        },
        successor: None,
    };
    let mut current_result = result(
        &current,
        Some((
            noted,
            CallRecord {
                started_at: 1_000,
                operation: Operation::Approve,
                method: "POST",
                endpoint: format!("/workflow/{taken}/approve/job-1"),
                status: Some(202),
                duration: Duration::from_millis(4),
                error: None,
            },
        )),
    );
    current_result.settle = Settlement::Finish {
        status: TaskStatus::Succeeded,
        outcome: Outcome::Approved,
        detail: "approved".into(),
    };
    let (old, new) = tokio::join!(
        writes.settle(result(&stale, None)),
        writes.settle(current_result),
    );
    assert!(!old.unwrap(), "the stale step's result is refused");
    assert!(new.unwrap(), "the current step's result is taken");

    let state = store.task_state(taken).await.unwrap().unwrap();
    assert_eq!(
        (state.status, state.outcome, state.attempts),
        (TaskStatus::Succeeded, Some(Outcome::Approved), 1)
    );
    let story = store
        .audit_get(&delivery_of(taken).to_string())
        .await
        .unwrap()
        .unwrap();
    let calls: Vec<_> = story.attempts.iter().map(|a| a.status).collect();
    assert_eq!(calls, vec![Some(202)], "one note, with its answer");
    let untouched = store.task_state(expired).await.unwrap().unwrap();
    assert_eq!(
        (untouched.status, untouched.attempts),
        (TaskStatus::Pending, 0)
    );
    if store.backend() == sym_circleci_approver::store::Backend::Sqlite {
        assert_eq!(*batches.lock().unwrap(), vec![3, 2]);
    }
}

#[tokio::test]
async fn a_checkpoint_runs_only_when_something_was_written_since_the_last_one() {
    use sym_circleci_approver::store::{Backend, Checkpoint};
    let (_db, store) = store().await;
    if store.backend() == Backend::Postgres {
        assert_eq!(store.checkpoint().await.unwrap(), Checkpoint::NotNeeded);
        return;
    }
    // The first one always runs: a WAL may be left from the process before.
    assert_eq!(store.checkpoint().await.unwrap(), Checkpoint::Complete);
    // An idle service: no statement at all.
    assert_eq!(store.checkpoint().await.unwrap(), Checkpoint::Skipped);
    assert_eq!(store.checkpoint().await.unwrap(), Checkpoint::Skipped);
    // A write: the next checkpoint copies it into the database file, then rests again.
    store
        .record_batch(&[delivery("msg_c", "ev-c", "approve", Uuid::new_v4())])
        .await
        .unwrap();
    assert_eq!(store.checkpoint().await.unwrap(), Checkpoint::Complete);
    assert_eq!(store.checkpoint().await.unwrap(), Checkpoint::Skipped);
}

/// A batch larger than one multi-row statement (200 rows) is written in several, each value
/// bound to its own row: each delivery's task names its workflow and its delivery, and each
/// repeat finds its own original (by Sym id and by webhook-id).
#[tokio::test]
async fn a_batch_of_several_statements_binds_every_value_to_its_own_row() {
    use std::collections::HashMap;
    use sym_circleci_approver::domain::ids::LeaseToken;
    let (_db, store) = store().await;
    let workflows: Vec<Uuid> = (0..450).map(|_| Uuid::new_v4()).collect();
    let batch: Vec<NewDelivery> = workflows
        .iter()
        .enumerate()
        .map(|(i, w)| delivery(&format!("msg_{i}"), &format!("ev-{i}"), "approve", *w))
        .collect();
    let stored = store.record_batch(&batch).await.unwrap();
    let mut delivery_of: HashMap<Uuid, _> = HashMap::new();
    for (result, workflow) in stored.iter().zip(&workflows) {
        let Recorded::Queued { delivery_id, .. } = result else {
            panic!("{result:?}")
        };
        delivery_of.insert(*workflow, *delivery_id);
    }

    let claimed = store
        .claim_due_tasks(
            &LeaseToken::new("test"),
            std::time::Duration::from_secs(60),
            500,
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 450);
    for task in &claimed {
        assert_eq!(
            delivery_of.get(&task.workflow_id.0),
            Some(&task.delivery_id),
            "{task:?}"
        );
    }

    // The same events again, half under their webhook-ids and half under new ones.
    let again: Vec<NewDelivery> = workflows
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let webhook_id = if i % 2 == 0 {
                format!("msg_{i}")
            } else {
                format!("msg_again_{i}")
            };
            delivery(&webhook_id, &format!("ev-{i}"), "approve", *w)
        })
        .collect();
    let repeats = store.record_batch(&again).await.unwrap();
    for (result, workflow) in repeats.iter().zip(&workflows) {
        assert_eq!(
            *result,
            Recorded::Duplicate {
                original_id: delivery_of[workflow]
            }
        );
    }
}
