"""Everything that touches a socket: the handshake, taking the socket from the server, frames.

No other package of rtgevent reads or writes a socket.
"""
