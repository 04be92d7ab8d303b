"""The modules users build models from: recurrent layers and cells (fastrnn.nn.layers),
the embedding, output layer and SequenceModel (fastrnn.nn.models), losses and optimizers."""
