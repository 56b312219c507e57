//! Each template renders to exactly these parts. User data is HTML-escaped in the HTML part
//! (including inside `href`), and left as typed in the subject and the plain text.

use baseaim_worker::jobs::send_email::{EmailError, TEMPLATES, render};
use serde_json::{Map, Value, json};

/// Every variable any template uses, with characters that must be escaped in HTML.
fn data() -> Map<String, Value> {
    json!({
        "client_name": "Tom & \"Jerry\" <b>",
        "dashboard_url": "https://app.baseaim.com/c/1",
        "project_name": "Spring <Launch>",
        "milestone": "Ads live",
        "summary": "3 campaigns & 2 audiences",
        "amount": "1,200.00",
        "currency": "USD",
        "invoice_url": "https://pay.example.com/in_1?a=1&b=2",
        "due_date": "2026-12-15",
    })
    .as_object()
    .unwrap()
    .clone()
}

#[test]
fn welcome_renders_subject_html_and_text_escaping_user_data_in_html_only() {
    let email = render("welcome", &data()).expect("renders");
    assert_eq!(email.subject, r#"Welcome to BaseAim, Tom & "Jerry" <b>"#);
    assert_eq!(
        email.html,
        r#"<!doctype html>
<html>
<body style="font-family: sans-serif; color: #222;">

<p>Hi Tom &amp; &quot;Jerry&quot; &lt;b&gt;,</p>
<p>Your BaseAim dashboard is ready: campaigns, invoices and documents in one place.</p>
<p><a href="https:&#x2f;&#x2f;app.baseaim.com&#x2f;c&#x2f;1">Open your dashboard</a></p>

<p style="color: #888; font-size: 12px;">BaseAim · you receive this email because you are a BaseAim client.</p>
</body>
</html>"#
    );
    assert_eq!(
        email.text,
        r#"Hi Tom & "Jerry" <b>,

Your BaseAim dashboard is ready: campaigns, invoices and documents in one place.

Open your dashboard: https://app.baseaim.com/c/1"#
    );
}

#[test]
fn milestone_update_renders_subject_html_and_text_escaping_user_data_in_html_only() {
    let email = render("milestone_update", &data()).expect("renders");
    assert_eq!(email.subject, r#"Spring <Launch>: Ads live"#);
    assert_eq!(
        email.html,
        r#"<!doctype html>
<html>
<body style="font-family: sans-serif; color: #222;">

<p>Hi Tom &amp; &quot;Jerry&quot; &lt;b&gt;,</p>
<p>Spring &lt;Launch&gt; reached a milestone: <strong>Ads live</strong>.</p>
<p>3 campaigns &amp; 2 audiences</p>
<p><a href="https:&#x2f;&#x2f;app.baseaim.com&#x2f;c&#x2f;1">See the details</a></p>

<p style="color: #888; font-size: 12px;">BaseAim · you receive this email because you are a BaseAim client.</p>
</body>
</html>"#
    );
    assert_eq!(
        email.text,
        r#"Hi Tom & "Jerry" <b>,

Spring <Launch> reached a milestone: Ads live.

3 campaigns & 2 audiences

See the details: https://app.baseaim.com/c/1"#
    );
}

#[test]
fn invoice_sent_renders_subject_html_and_text_escaping_user_data_in_html_only() {
    let email = render("invoice_sent", &data()).expect("renders");
    assert_eq!(email.subject, r#"Your invoice for 1,200.00 USD"#);
    assert_eq!(
        email.html,
        r#"<!doctype html>
<html>
<body style="font-family: sans-serif; color: #222;">

<p>Hi Tom &amp; &quot;Jerry&quot; &lt;b&gt;,</p>
<p>Your invoice for <strong>1,200.00 USD</strong> is ready, due 2026-12-15.</p>
<p><a href="https:&#x2f;&#x2f;pay.example.com&#x2f;in_1?a=1&amp;b=2">View and pay the invoice</a></p>

<p style="color: #888; font-size: 12px;">BaseAim · you receive this email because you are a BaseAim client.</p>
</body>
</html>"#
    );
    assert_eq!(
        email.text,
        r#"Hi Tom & "Jerry" <b>,

Your invoice for 1,200.00 USD is ready, due 2026-12-15.

View and pay the invoice: https://pay.example.com/in_1?a=1&b=2"#
    );
}

#[test]
fn payment_failed_renders_subject_html_and_text_escaping_user_data_in_html_only() {
    let email = render("payment_failed", &data()).expect("renders");
    assert_eq!(email.subject, r#"Payment failed: 1,200.00 USD"#);
    assert_eq!(
        email.html,
        r#"<!doctype html>
<html>
<body style="font-family: sans-serif; color: #222;">

<p>Hi Tom &amp; &quot;Jerry&quot; &lt;b&gt;,</p>
<p>We could not take your payment of <strong>1,200.00 USD</strong>. Please update your payment method to keep your services running.</p>
<p><a href="https:&#x2f;&#x2f;pay.example.com&#x2f;in_1?a=1&amp;b=2">Update payment and pay the invoice</a></p>

<p style="color: #888; font-size: 12px;">BaseAim · you receive this email because you are a BaseAim client.</p>
</body>
</html>"#
    );
    assert_eq!(
        email.text,
        r#"Hi Tom & "Jerry" <b>,

We could not take your payment of 1,200.00 USD. Please update your payment method to keep your services running.

Update payment and pay the invoice: https://pay.example.com/in_1?a=1&b=2"#
    );
}

#[test]
fn every_template_refuses_a_missing_variable_naming_the_template() {
    for template in TEMPLATES {
        let mut data = data();
        data.remove("client_name");
        match render(template, &data) {
            Err(EmailError::Render {
                template: t,
                detail,
            }) => {
                assert_eq!(t, template);
                assert!(detail.contains("undefined"), "{detail}");
            }
            other => panic!("{template}: expected a render error, got {other:?}"),
        }
    }
}

#[test]
fn an_unknown_template_is_refused() {
    assert!(matches!(
        render("layout", &data()),
        Err(EmailError::UnknownTemplate(name)) if name == "layout"
    ));
}
