//! Guided lessons as data: every bundled lesson reads, quotes the demo models' recorded figures
//! exactly, asks the class to predict before it shows, and ends on a figure to keep; the checks
//! catch a misquote, and a teacher's lesson file opens in the app or is refused with its line.
//! (`app::each_lesson_runs_start_to_finish` drives every lesson through the app.)

use std::collections::BTreeMap;

use advmoe_app::command::AppCommand;
use advmoe_app::demo::{DEMOS, recorded_row};
use advmoe_app::lesson::{self, Condition, Lesson};
use advmoe_app::state::AppState;

/// The demo models' recorded figures, by their link keys (their folder names).
fn recorded() -> BTreeMap<&'static str, advmoe_engine::compare::CompareRow> {
    DEMOS
        .iter()
        .map(|d| (d.name, recorded_row(d.name).unwrap().unwrap()))
        .collect()
}

#[test]
fn the_bundled_lessons_quote_the_recorded_figures_and_predict_first() {
    let recorded = recorded();
    let rows = |key: &str| recorded.get(key);
    let lessons: Vec<Lesson> = lesson::BUNDLED
        .iter()
        .map(|(name, text)| Lesson::parse(name, text).unwrap())
        .collect();
    assert!(lessons.len() >= 4);
    let mut quotes = 0;
    for l in &lessons {
        let wrong = l.check_quotes(&rows);
        assert!(wrong.is_empty(), "{}: {wrong:?}", l.id);
        quotes += l
            .cards
            .iter()
            .map(|c| lesson::quotes(&c.text).len() + lesson::quotes(&c.after).len())
            .sum::<usize>();
        let predicts: Vec<_> = l.cards.iter().filter_map(|c| c.predict.as_ref()).collect();
        assert!(!predicts.is_empty(), "{} has no predict-first card", l.id);
        for p in predicts {
            assert!(p.expect.is_some(), "{}: a prediction without expect", l.id);
            // What the recorded figures decide is decided here; live attacks in the app test.
            if let Some(expect) = p.expect.as_ref().filter(|e| !e.needs_attack()) {
                assert_eq!(
                    expect.holds(None, &rows),
                    Some(true),
                    "{}: {expect:?}",
                    l.id
                );
                let right = p
                    .choices
                    .iter()
                    .filter(|c| c.when.holds(None, &rows) == Some(true))
                    .count();
                assert_eq!(right, 1, "{}: one choice must be right", l.id);
            }
        }
        let last = l.cards.last().unwrap();
        assert!(last.keep, "{} does not end on a figure to keep", l.id);
        assert!(
            l.cards
                .iter()
                .all(|c| c.set.is_some() || c.predict.is_none())
        );
    }
    assert!(quotes >= 20, "only {quotes} quoted figures");

    // A misquote is caught, and says what the figure is.
    let text = lesson::BUNDLED[0].1.replace("[86.0%](", "[88.0%](");
    let bad = Lesson::parse("changed.lesson", &text).unwrap();
    let wrong = bad.check_quotes(&rows);
    assert_eq!(wrong.len(), 1, "{wrong:?}");
    assert!(wrong[0].to_string().contains("86.0%"), "{}", wrong[0]);
    // So is a figure of a model that is not there.
    let text = lesson::BUNDLED[0]
        .1
        .replace("(dense-full-trades.images)", "(dense-cnn.images)");
    let wrong = Lesson::parse("gone.lesson", &text)
        .unwrap()
        .check_quotes(&rows);
    assert!(wrong[0].actual.is_none() && wrong[0].to_string().contains("dense-cnn"));
    // And the conditions compare what they say.
    // (AdvMoE's router robustness is recorded as 66.1%.)
    let higher = |than: f64| Condition::Compare {
        left: lesson::Figure {
            model: "advmoe".into(),
            kind: lesson::FigureKind::RouterRobustness(None),
        },
        greater: true,
        right: lesson::Operand::Number(than),
    };
    assert_eq!(higher(0.66).holds(None, &rows), Some(true));
    assert_eq!(higher(0.67).holds(None, &rows), Some(false));
}

#[test]
fn a_teachers_lesson_file_opens_or_is_refused_with_its_line() {
    let mut state = AppState::new(None);
    let bundled = state.lesson.lessons.len();
    let own = "# Our own lesson\nA short one.\n\n## Look at the report\nset: view=report\nlook: table\nRead the table.\n";
    let commands = state.accept_files(vec![("ours.lesson".into(), own.as_bytes().to_vec())]);
    assert_eq!(state.lesson.lessons.len(), bundled + 1);
    assert!(
        matches!(commands.as_slice(), [AppCommand::ShowCard(i, 0)] if *i == bundled),
        "{commands:?}"
    );
    assert_eq!(state.lesson.lessons[bundled].id, "ours");

    for (text, says) in [
        ("## A card before the title\n", "line 1"),
        (
            "# T\n\n## C\nlook: the-moon\n",
            "line 4: look: \"the-moon\"",
        ),
        (
            "# T\n\n## C\nset: view=attack&colour=red\n",
            "line 4: set: cannot use \"colour\"",
        ),
        (
            "# T\n\n## C\nchoice: Yes | held\n",
            "line 4: choice: before predict:",
        ),
        (
            "# T\n\n## C\nset: view=report\npredict: ?\nchoice: Yes | held\nchoice: No | flipped\n",
            "does not set view=attack",
        ),
        (
            "# T\n\n## C\nThe figure [1%](moe-at.speed).\n",
            "no figure \"speed\"",
        ),
    ] {
        let mut state = AppState::new(None);
        state.accept_files(vec![("bad.lesson".into(), text.as_bytes().to_vec())]);
        let error = state.error.clone().unwrap_or_default();
        assert!(
            error.contains("bad.lesson") && error.contains(says),
            "{says}: {error}"
        );
        assert_eq!(state.lesson.lessons.len(), bundled);
    }
}
