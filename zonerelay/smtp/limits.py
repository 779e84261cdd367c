"""Protocol limits of the SMTP server core, each with the reason it has the value it has.

Kept in one place so that an operator (and a reviewer) can see every bound the server puts on a
peer, and so that tests can drive the core exactly to the edge of each one.
"""

from __future__ import annotations

from typing import Final

# RFC 5321 4.5.3.1.4: "The maximum total length of a command line including the command word and the
# <CRLF> is 512 octets."  Used for every command except MAIL, RCPT and AUTH.
COMMAND_LINE_MAX: Final = 512

# RFC 5321 4.5.3.1.4 (after RFC 1869 4.1.2): "SMTP extensions may alter this limit".  Each extension
# names its own increment (SIZE +26 in RFC 1870, AUTH= +500 in RFC 4954, DSN ORCPT/ENVID +500 each in
# RFC 3461, SMTPUTF8 +10 in RFC 6531).  Rather than sum the ones we happen to advertise, MAIL and RCPT
# get one generous allowance that covers all of them with room for UTF-8 addresses (up to 4 octets
# per character).  The limit still exists only to bound memory per connection.
MAIL_PARAMETERS_ALLOWANCE: Final = 4096
MAIL_COMMAND_LINE_MAX: Final = COMMAND_LINE_MAX + MAIL_PARAMETERS_ALLOWANCE

# RFC 4954 4: "the AUTH command ... 12288 octets" for a line carrying a (base64) SASL response, the
# initial response on the AUTH command line included.
AUTH_LINE_MAX: Final = 12288

# RFC 5321 4.5.3.1.8: a server MUST accept at least 100 recipients per transaction.  1000 keeps
# large legitimate submissions in one transaction while bounding the envelope held in memory.
DEFAULT_MAX_RECIPIENTS: Final = 1000

# Not from an RFC: a client that keeps sending commands we do not know is a scanner or is talking
# another protocol (HTTP to port 25).  aiosmtpd and Postfix both cut such clients off after a handful
# of errors; we answer 421 4.7.0 after this many and close (RFC 5321 3.8 allows the server to close
# with 421 at any time).
DEFAULT_MAX_UNKNOWN_COMMANDS: Final = 10

# RFC 1035 2.3.4 (DNS): a label is at most 63 octets and a name at most 255.  RFC 5321 4.5.3.1.2
# repeats the 255 for domains.  A longer domain cannot be resolved, so accepting it only defers
# the failure to the bounce.
DOMAIN_LABEL_MAX: Final = 63
DOMAIN_MAX: Final = 255

# Deliberately *not* enforced:
# - local-part 64 octets (RFC 5321 4.5.3.1.1): SRS, VERP and BATV senders routinely exceed it and the
#   RFC itself asks implementations to accept longer ones "to the maximum extent possible"; the
#   MAIL/RCPT line limit above bounds it anyway.
# - text line 1000 octets in DATA (RFC 5321 4.5.3.1.6): the body is streamed in chunks, so long lines
#   cost nothing; the message size limit bounds the whole body.
